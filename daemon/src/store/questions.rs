//! What each device was asked: the defence against challenge shopping.
//!
//! An attacker who once saw a login (a card's two positions and their
//! codes, an OCRA question and its response) could otherwise ask for
//! challenges, for free, until the same question came up, and replay the
//! answer. So, per device, the way banks run code cards:
//!
//! - a device keeps its **pending question** until it is answered right or
//!   the device locks: asking again gives a new challenge id with the same
//!   question, and the earlier id stops being answerable (a device has one
//!   current challenge);
//! - a challenge that **expired without any answer** counts as one wrong
//!   answer, charged when the device is next challenged (unless it is
//!   locked then: a wrong answer would not count either);
//! - the last `challenges.remembered-questions` questions answered right
//!   are **never issued again**;
//! - at most `challenges.per-device-per-day` challenges a UTC day.
//!
//! The rules are here once; the embedded store keeps a [`QuestionMemory`]
//! per device in memory (beside its failure state), a shared store as one
//! record per device ([`QuestionMemory::encode`]).

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use crate::clock::Timestamp;
use crate::identity::ChallengeId;
use crate::otp::card::CardChallenge;
use crate::wire::codec::{Put, Reader};

use crate::store::Question;

/// Draws before giving up on finding a question not remembered (only a
/// question space about as small as the memory gets here).
const DRAWS: usize = 32;

const DAY_MILLIS: u64 = 86_400_000;

/// The limits of [`QuestionMemory`], from `[challenges]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuestionLimits {
    /// Challenges per device per UTC day.
    pub per_day: u32,
    /// Questions answered right that are never issued again.
    pub remembered: usize,
}

/// The question a device was last asked and has not answered right.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    question: Question,
    /// Its fingerprint, computed once.
    print: Option<Print>,
    /// The one challenge that may still be answered.
    challenge: ChallengeId,
    expires_at: Timestamp,
    /// A wrong answer was given (its failure is already counted).
    tried: bool,
}

/// One device's record of what it was asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuestionMemory {
    /// Boxed: a pending question is about 80 bytes, and most of a large
    /// registry's devices have none at any moment (every device holds a
    /// `QuestionMemory`; a box is one small allocation per challenge).
    pending: Option<Box<Pending>>,
    /// Fingerprints of the questions last answered right, oldest first;
    /// allocated once at `remembered`'s size. Every device that logs in
    /// fills it, so it is most of a busy device's memory: two bytes a
    /// question (see [`Print`]).
    answered: Vec<Print>,
    /// The UTC day `issued_today` counts.
    day: u32,
    issued_today: u32,
}

/// Why a challenge is not issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueRefused {
    /// `per_day` reached; the next UTC day starts in this many millis.
    DailyCap { retry_after_millis: u64 },
}

/// What [`QuestionMemory::issue`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub question: Question,
    /// The earlier challenge this one replaces (no longer answerable).
    pub superseded: Option<ChallengeId>,
}

fn day_of(now: Timestamp) -> u32 {
    u32::try_from(now.0 / DAY_MILLIS).unwrap_or(u32::MAX)
}

/// A remembered question's fingerprint: 16 bits. A collision only makes a
/// question that was never asked count as remembered (one more redraw,
/// about `remembered` / 65,536 of draws); a question that was answered
/// right always matches its own print, so it is never asked again. 64
/// remembered questions take 128 bytes a device instead of 512 as `u64`s.
type Print = u16;

/// A question's fingerprint in the memory; `None` for a question that is
/// not remembered (a temporary code has no question).
fn fingerprint(question: &Question) -> Option<Print> {
    wide_fingerprint(question).map(narrow)
}

/// The 64-bit fingerprint shared-store records held before prints were
/// 16 bits: read from them by [`narrow`], so an old record keeps its
/// memory.
fn wide_fingerprint(question: &Question) -> Option<u64> {
    match question {
        Question::Card(pick) => Some(u64::from(pick.first()) << 16 | u64::from(pick.second())),
        Question::Ocra(text) => {
            // SipHash under a fixed key: stable across nodes and restarts
            // (a shared store keeps it), and questions are the server's
            // random draws, so nobody picks collisions; one only keeps one
            // more question from being asked.
            let mut hasher = SipHasher13::new_with_keys(0x736c_7371, 0x7565_7374);
            hasher.write(text.as_bytes());
            Some(hasher.finish() | 1 << 63)
        }
        Question::Code => None,
    }
}

/// The top 16 bits of a multiplicative (Fibonacci) hash: a card's print
/// is two small positions, which a plain fold (`first ^ second`) would
/// collide in whole families.
fn narrow(wide: u64) -> Print {
    (wide.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as Print
}

/// Set in a stored record's count of prints when they are 16-bit; a
/// record without it (written before) has 64-bit prints. Counts are at
/// most 1,024 (`challenges.remembered-questions`), far below the bit.
const SHORT_PRINTS: u16 = 0x8000;

impl QuestionMemory {
    /// Whether the pending challenge expired without any answer: it then
    /// counts as one wrong answer, which the caller records before
    /// [`issue`](Self::issue) (and [`forget_pending`](Self::forget_pending)
    /// if that locks the device).
    pub fn expired_unanswered(&self, now: Timestamp) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.expires_at <= now && !p.tried)
    }

    /// Whether `per_day` challenges were issued today; how long until the
    /// next day if so.
    pub fn cap_reached(&self, now: Timestamp, limits: QuestionLimits) -> Option<IssueRefused> {
        (self.day == day_of(now) && self.issued_today >= limits.per_day).then(|| {
            IssueRefused::DailyCap {
                retry_after_millis: DAY_MILLIS - now.0 % DAY_MILLIS,
            }
        })
    }

    /// The question of a new challenge `id` open until `expires_at`: the
    /// pending one if there is one, otherwise a fresh draw that was not
    /// answered right lately. `id` becomes the device's one current
    /// challenge. Charges nothing: see
    /// [`expired_unanswered`](Self::expired_unanswered).
    pub fn issue(
        &mut self,
        id: ChallengeId,
        now: Timestamp,
        expires_at: Timestamp,
        limits: QuestionLimits,
        mut draw: impl FnMut() -> Question,
    ) -> Result<Issued, IssueRefused> {
        if let Some(refused) = self.cap_reached(now, limits) {
            return Err(refused);
        }
        let today = day_of(now);
        if self.day != today {
            self.day = today;
            self.issued_today = 0;
        }
        self.issued_today += 1;
        let (question, print, superseded) = match self.pending.take() {
            Some(pending) => (pending.question, pending.print, Some(pending.challenge)),
            None => {
                let (question, print) = self.fresh(&mut draw);
                (question, print, None)
            }
        };
        self.pending = Some(Box::new(Pending {
            question: question.clone(),
            print,
            challenge: id,
            expires_at,
            tried: false,
        }));
        Ok(Issued {
            question,
            superseded,
        })
    }

    /// A draw not among the questions answered right lately. Should every
    /// draw be remembered (a question space about the memory's size), the
    /// last draw is issued and forgotten from the memory.
    fn fresh(&mut self, draw: &mut impl FnMut() -> Question) -> (Question, Option<Print>) {
        let mut question = draw();
        let mut print = fingerprint(&question);
        for _ in 1..DRAWS {
            match print {
                Some(p) if self.answered.contains(&p) => {
                    question = draw();
                    print = fingerprint(&question);
                }
                _ => return (question, print),
            }
        }
        if let Some(p) = print {
            // Forgets every print equal to it: a colliding question comes
            // back too, only here, where the space is about the memory's
            // size anyway.
            self.answered.retain(|a| *a != p);
        }
        (question, print)
    }

    /// Whether `id` is the device's current challenge, the only one that
    /// may be answered.
    pub fn is_current(&self, id: ChallengeId) -> bool {
        self.pending.as_ref().is_some_and(|p| p.challenge == id)
    }

    /// The current challenge `id` was answered right: its question is
    /// remembered and never issued again while remembered.
    pub fn answered_right(&mut self, id: ChallengeId, limits: QuestionLimits) {
        if !self.is_current(id) {
            return;
        }
        let Some(print) = self.pending.take().and_then(|p| p.print) else {
            return;
        };
        if limits.remembered == 0 {
            self.answered = Vec::new();
            return;
        }
        if self.answered.capacity() < limits.remembered {
            // Exactly the memory's size: pushing would double past it.
            self.answered
                .reserve_exact(limits.remembered - self.answered.len());
        }
        if self.answered.len() >= limits.remembered {
            // Oldest first: a shift of at most 2 KiB, once per login.
            let excess = self.answered.len() + 1 - limits.remembered;
            self.answered.drain(..excess);
        }
        self.answered.push(print);
    }

    /// The current challenge `id` got a wrong answer (counted as a failure
    /// by the caller): it no longer counts again when it expires; if that
    /// failure `locked` the device, the next challenge may ask anew.
    pub fn answered_wrong(&mut self, id: ChallengeId, locked: bool) {
        if locked {
            self.forget_pending();
        } else if let Some(pending) = self.pending.as_mut().filter(|p| p.challenge == id) {
            pending.tried = true;
        }
    }

    /// The device locked: the next challenge may ask a new question.
    pub fn forget_pending(&mut self) {
        self.pending = None;
    }

    /// The stored form (a shared store's record).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + 2 * self.answered.len());
        out.put_u64(u64::from(self.day) << 32 | u64::from(self.issued_today));
        match &self.pending {
            None => out.put_u8(0),
            Some(p) => {
                out.put_u8(if p.tried { 2 } else { 1 });
                out.put_u64(p.challenge.0);
                out.put_u64(p.expires_at.0);
                encode_question(&p.question, &mut out);
            }
        }
        let count = self.answered.len().min(usize::from(!SHORT_PRINTS));
        out.put_u16(u16::try_from(count).unwrap_or(0) | SHORT_PRINTS);
        for print in self.answered.iter().take(count) {
            out.put_u16(*print);
        }
        out
    }

    /// A stored record; `None` if it does not parse.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        let counts = r.u64("counts").ok()?;
        let pending = match r.u8("pending").ok()? {
            0 => None,
            tag @ (1 | 2) => {
                let challenge = ChallengeId(r.u64("challenge").ok()?);
                let expires_at = Timestamp(r.u64("expires at").ok()?);
                let question = decode_question(&mut r)?;
                Some(Box::new(Pending {
                    tried: tag == 2,
                    challenge,
                    expires_at,
                    print: fingerprint(&question),
                    question,
                }))
            }
            _ => return None,
        };
        let count = r.u16("remembered").ok()?;
        let answered = if count & SHORT_PRINTS != 0 {
            (0..count & !SHORT_PRINTS)
                .map(|_| r.u16("fingerprint").ok())
                .collect::<Option<Vec<Print>>>()?
        } else {
            (0..count)
                .map(|_| r.u64("fingerprint").ok().map(narrow))
                .collect::<Option<Vec<Print>>>()?
        };
        r.finish().ok()?;
        Some(Self {
            pending,
            answered,
            day: (counts >> 32) as u32,
            issued_today: (counts & 0xffff_ffff) as u32,
        })
    }
}

const QUESTION_OCRA: u8 = 1;
const QUESTION_CARD: u8 = 2;
const QUESTION_CODE: u8 = 3;

/// A question as both stores' records carry it.
pub(super) fn encode_question(question: &Question, out: &mut Vec<u8>) {
    match question {
        Question::Ocra(text) => {
            out.put_u8(QUESTION_OCRA);
            out.put_bytes(text.as_bytes());
        }
        Question::Card(pick) => {
            out.put_u8(QUESTION_CARD);
            out.put_u16(pick.first());
            out.put_u16(pick.second());
        }
        Question::Code => out.put_u8(QUESTION_CODE),
    }
}

pub(super) fn decode_question(r: &mut Reader<'_>) -> Option<Question> {
    Some(match r.u8("question").ok()? {
        QUESTION_OCRA => Question::Ocra(r.str("text").ok()?.to_owned()),
        QUESTION_CARD => Question::Card(CardChallenge::from_stored(
            r.u16("first").ok()?,
            r.u16("second").ok()?,
        )?),
        QUESTION_CODE => Question::Code,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QuestionLimits = QuestionLimits {
        per_day: 5,
        remembered: 3,
    };
    const NOON: Timestamp = Timestamp(20_000 * DAY_MILLIS + DAY_MILLIS / 2);

    /// `millis` after noon.
    fn at(millis: u64) -> Timestamp {
        Timestamp(NOON.0 + millis)
    }

    fn ocra(text: &str) -> Question {
        Question::Ocra(text.to_owned())
    }

    /// Draws the texts in order, then panics.
    fn draws<'a>(texts: &'a [&'a str]) -> impl FnMut() -> Question + 'a {
        let mut next = texts.iter();
        move || ocra(next.next().expect("no more draws"))
    }

    #[test]
    fn an_unanswered_question_is_asked_again_until_answered_right() {
        let mut memory = QuestionMemory::default();
        let first = memory
            .issue(ChallengeId(1), NOON, at(1), LIMITS, draws(&["111"]))
            .unwrap();
        assert_eq!(first.question, ocra("111"));
        assert_eq!(first.superseded, None);
        // Asking again: the same question, the earlier id no longer current.
        let again = memory
            .issue(ChallengeId(2), NOON, at(1), LIMITS, draws(&[]))
            .unwrap();
        assert_eq!(again.question, ocra("111"));
        assert_eq!(again.superseded, Some(ChallengeId(1)));
        assert!(!memory.is_current(ChallengeId(1)));
        assert!(memory.is_current(ChallengeId(2)));
        // A wrong answer keeps it; a right one (to the current id) ends it.
        memory.answered_wrong(ChallengeId(2), false);
        memory.answered_right(ChallengeId(1), LIMITS);
        assert!(memory.is_current(ChallengeId(2)));
        memory.answered_right(ChallengeId(2), LIMITS);
        assert!(!memory.is_current(ChallengeId(2)));
        let next = memory
            .issue(ChallengeId(3), NOON, at(1), LIMITS, draws(&["111", "222"]))
            .unwrap();
        assert_eq!(next.question, ocra("222"), "an answered question came back");
        // Locking the device forgets the pending question.
        memory.answered_wrong(ChallengeId(3), true);
        let after_lock = memory
            .issue(ChallengeId(4), NOON, at(1), LIMITS, draws(&["333"]))
            .unwrap();
        assert_eq!(after_lock.question, ocra("333"));
        assert_eq!(after_lock.superseded, None);
    }

    #[test]
    fn only_an_expired_challenge_without_any_answer_counts() {
        let mut memory = QuestionMemory::default();
        let ends = at(1000);
        memory
            .issue(ChallengeId(1), NOON, ends, LIMITS, draws(&["111"]))
            .unwrap();
        assert!(!memory.expired_unanswered(NOON));
        assert!(memory.expired_unanswered(ends));
        memory.answered_wrong(ChallengeId(1), false);
        assert!(!memory.expired_unanswered(ends), "its failure is counted");
        memory
            .issue(
                ChallengeId(2),
                ends,
                Timestamp(ends.0 + 1000),
                LIMITS,
                draws(&[]),
            )
            .unwrap();
        assert!(memory.expired_unanswered(Timestamp(ends.0 + 1000)));
    }

    #[test]
    fn the_memory_is_bounded_and_the_day_has_a_cap() {
        let mut memory = QuestionMemory::default();
        for (n, text) in ["1", "2", "3", "4"].into_iter().enumerate() {
            let id = ChallengeId(n as u64);
            memory
                .issue(id, NOON, at(1), LIMITS, draws(&[text]))
                .unwrap();
            memory.answered_right(id, LIMITS);
        }
        assert_eq!(memory.answered.len(), LIMITS.remembered);
        // "1" was forgotten; "2".."4" are still refused.
        let issued = memory
            .issue(
                ChallengeId(9),
                NOON,
                at(1),
                LIMITS,
                draws(&["2", "3", "4", "1"]),
            )
            .unwrap();
        assert_eq!(issued.question, ocra("1"));
        assert_eq!(
            memory.issue(ChallengeId(10), NOON, NOON, LIMITS, draws(&[])),
            Err(IssueRefused::DailyCap {
                retry_after_millis: DAY_MILLIS / 2
            })
        );
        let tomorrow = at(DAY_MILLIS / 2);
        assert!(
            memory
                .issue(ChallengeId(10), tomorrow, tomorrow, LIMITS, draws(&[]))
                .is_ok()
        );
    }

    #[test]
    fn a_space_smaller_than_the_memory_still_issues() {
        let mut memory = QuestionMemory::default();
        for id in 0..3 {
            memory
                .issue(ChallengeId(id), NOON, NOON, LIMITS, || ocra("only"))
                .unwrap();
            memory.answered_right(ChallengeId(id), LIMITS);
        }
        assert_eq!(memory.answered.len(), 1);
    }

    #[test]
    fn a_stored_memory_reads_back_as_it_was() {
        let mut memory = QuestionMemory::default();
        memory
            .issue(ChallengeId(1), NOON, NOON, LIMITS, draws(&["12345678"]))
            .unwrap();
        memory.answered_right(ChallengeId(1), LIMITS);
        memory
            .issue(ChallengeId(2), NOON, at(5), LIMITS, || {
                Question::Card(CardChallenge::from_stored(3, 17).unwrap())
            })
            .unwrap();
        memory.answered_wrong(ChallengeId(2), false);
        let bytes = memory.encode();
        assert_eq!(QuestionMemory::decode(&bytes), Some(memory.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(QuestionMemory::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            QuestionMemory::decode(&QuestionMemory::default().encode()),
            Some(QuestionMemory::default())
        );
    }

    #[test]
    fn the_memory_is_allocated_once_at_its_size() {
        let limits = QuestionLimits {
            per_day: 1000,
            // Not a power of two: a Vec that doubled would hold 128.
            remembered: 100,
        };
        let mut memory = QuestionMemory::default();
        for id in 0..200 {
            let text = id.to_string();
            memory
                .issue(ChallengeId(id), NOON, NOON, limits, || ocra(&text))
                .unwrap();
            memory.answered_right(ChallengeId(id), limits);
            assert!(memory.answered.capacity() <= 100, "grew past it at {id}");
        }
        assert_eq!(memory.answered.len(), 100);
        // The newest 100 are remembered, the older forgotten.
        let mut texts = ["199", "100", "99"].into_iter();
        let issued = memory
            .issue(ChallengeId(999), NOON, NOON, limits, || {
                ocra(texts.next().unwrap())
            })
            .unwrap();
        assert_eq!(issued.question, ocra("99"));
    }

    #[test]
    fn a_record_with_wide_prints_keeps_its_memory() {
        // The layout shared-store records had before prints were 16 bits.
        let mut old = Vec::new();
        old.put_u64(u64::from(day_of(NOON)) << 32 | 1);
        old.put_u8(0);
        old.put_u16(1);
        old.put_u64(wide_fingerprint(&ocra("111")).unwrap());
        let mut memory = QuestionMemory::decode(&old).unwrap();
        let issued = memory
            .issue(ChallengeId(1), NOON, NOON, LIMITS, draws(&["111", "222"]))
            .unwrap();
        assert_eq!(
            issued.question,
            ocra("222"),
            "a remembered question came back"
        );
        // Written back in the new layout, it reads the same.
        assert_eq!(QuestionMemory::decode(&memory.encode()), Some(memory));
    }

    #[test]
    fn card_questions_spread_over_the_prints() {
        // Every question of a default card: two different positions of 224.
        let mut per_print = vec![0u32; 1 << 16];
        for first in 1..=crate::otp::card::DEFAULT_POSITIONS {
            for second in (1..=crate::otp::card::DEFAULT_POSITIONS).filter(|s| *s != first) {
                let pick = CardChallenge::from_stored(first, second).unwrap();
                per_print[usize::from(fingerprint(&Question::Card(pick)).unwrap())] += 1;
            }
        }
        // 49,952 questions over 65,536 prints: about what random prints
        // give (a plain fold, first ^ second, puts up to 224 on one).
        let crowded = per_print.iter().copied().max().unwrap();
        assert!(crowded <= 8, "{crowded} card questions share one print");
    }
}
