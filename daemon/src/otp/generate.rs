//! Random codes for SMS and temporary access, drawn from a CSPRNG.
//!
//! Each character is drawn uniformly from the alphabet with rejection
//! sampling (`rand`'s `Uniform`, Lemire's method), so no symbol is more
//! likely than another — unlike `byte % alphabet_len`, which favours the
//! first `256 % len` symbols. Production passes the OS generator
//! (`rand::rngs::SysRng`); tests pass a seeded one.

use rand::CryptoRng;
use rand::distr::{Distribution, Uniform};

use super::{Code, MAX_CODE_LEN};

/// The most symbols an alphabet may have.
pub const MAX_ALPHABET: usize = 64;

/// Why an alphabet or a code length was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error("alphabet needs 2..={MAX_ALPHABET} symbols, has {0}")]
    AlphabetSize(usize),
    #[error("alphabet symbol {0:?} is not a printable ASCII character")]
    Symbol(char),
    #[error("alphabet has {0:?} twice")]
    Repeated(char),
    #[error("code length {0} is outside 1..={MAX_CODE_LEN}")]
    Length(usize),
}

/// The symbols codes are drawn from: distinct printable ASCII characters.
#[derive(Debug, Clone, PartialEq)]
pub struct Alphabet {
    symbols: Box<[u8]>,
    pick: Uniform<u32>,
}

impl Alphabet {
    /// The ten decimal digits, the default for SMS and temporary codes.
    #[allow(clippy::expect_used)] // a constant input; `digits_alphabet_is_valid` tests it
    pub fn digits() -> Self {
        Self::new("0123456789").expect("ten distinct digits are a valid alphabet")
    }

    pub fn new(symbols: &str) -> Result<Self, GenerateError> {
        let count = symbols.chars().count();
        if !(2..=MAX_ALPHABET).contains(&count) {
            return Err(GenerateError::AlphabetSize(count));
        }
        for (position, symbol) in symbols.chars().enumerate() {
            if !symbol.is_ascii_graphic() {
                return Err(GenerateError::Symbol(symbol));
            }
            if symbols
                .chars()
                .take(position)
                .any(|earlier| earlier == symbol)
            {
                return Err(GenerateError::Repeated(symbol));
            }
        }
        // count is 2..=64 here, so the range is never empty.
        let pick = Uniform::new(0, count as u32).map_err(|_| GenerateError::AlphabetSize(count))?;
        Ok(Self {
            symbols: symbols.as_bytes().into(),
            pick,
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.symbols).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// A code of `length` symbols (at most [`MAX_CODE_LEN`]), each uniform
    /// and independent.
    pub fn generate<R: CryptoRng + ?Sized>(&self, rng: &mut R, length: usize) -> Code {
        let mut code = Code::empty();
        for _ in 0..length.min(MAX_CODE_LEN) {
            code.push(self.draw(rng));
        }
        code
    }

    /// One symbol, uniformly.
    fn draw<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> u8 {
        let index = self.pick.sample(rng) as usize;
        self.symbols.get(index).copied().unwrap_or(b'0')
    }
}

/// How codes of one kind look: alphabet and length.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeSpec {
    alphabet: Alphabet,
    length: usize,
}

impl CodeSpec {
    pub fn new(alphabet: Alphabet, length: usize) -> Result<Self, GenerateError> {
        if !(1..=MAX_CODE_LEN).contains(&length) {
            return Err(GenerateError::Length(length));
        }
        Ok(Self { alphabet, length })
    }

    /// Six decimal digits: the usual SMS code.
    pub fn six_digits() -> Self {
        Self {
            alphabet: Alphabet::digits(),
            length: 6,
        }
    }

    pub fn alphabet(&self) -> &Alphabet {
        &self.alphabet
    }

    pub fn length(&self) -> usize {
        self.length
    }

    /// A fresh code: `length` symbols, each uniform and independent.
    pub fn generate<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Code {
        self.alphabet.generate(rng, self.length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rand_core::UnwrapErr;
    use rand::rngs::SysRng;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    /// Pearson's chi-square statistic of `counts` against a uniform spread.
    fn chi_square(counts: &[u64]) -> f64 {
        let total: u64 = counts.iter().sum();
        let expected = total as f64 / counts.len() as f64;
        counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    }

    // Critical values of the chi-square distribution at p = 0.001.
    const CRITICAL_35_DOF: f64 = 66.62;
    const CRITICAL_9_DOF: f64 = 27.88;

    const BASE36: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

    #[test]
    fn digits_alphabet_is_valid() {
        assert_eq!(Alphabet::digits().as_str(), "0123456789");
    }

    #[test]
    fn every_symbol_is_equally_likely() {
        // 36 symbols do not divide 256: a `byte % 36` generator would favour
        // the first four symbols by 8/7 and fail this test (see below).
        let spec = CodeSpec::new(Alphabet::new(BASE36).unwrap(), 8).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(0x5e5);
        let mut counts = [0u64; 36];
        for _ in 0..45_000 {
            for symbol in spec.generate(&mut rng).as_bytes() {
                counts[BASE36.find(char::from(*symbol)).unwrap()] += 1;
            }
        }
        let statistic = chi_square(&counts);
        assert!(
            statistic < CRITICAL_35_DOF,
            "chi-square {statistic:.1} over 35 dof"
        );
    }

    #[test]
    fn the_distribution_check_catches_modulo_bias() {
        // The same statistic over the naive `byte % 36`: proves the test above
        // has the power to fail.
        let mut rng = ChaCha20Rng::seed_from_u64(0x5e5);
        let mut counts = [0u64; 36];
        for _ in 0..360_000 {
            let byte = (rng.next_u32() & 0xff) as usize;
            counts[byte % 36] += 1;
        }
        assert!(chi_square(&counts) > CRITICAL_35_DOF);
    }

    #[test]
    fn every_position_of_a_code_is_uniform() {
        let spec = CodeSpec::new(Alphabet::digits(), 6).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        let mut counts = [[0u64; 10]; 6];
        for _ in 0..50_000 {
            let code = spec.generate(&mut rng);
            for (position, digit) in code.as_bytes().iter().enumerate() {
                counts[position][usize::from(digit - b'0')] += 1;
            }
        }
        for (position, row) in counts.iter().enumerate() {
            let statistic = chi_square(row);
            assert!(
                statistic < CRITICAL_9_DOF,
                "position {position}: chi-square {statistic:.1}"
            );
        }
    }

    #[test]
    fn os_generator_gives_codes_of_the_spec() {
        let spec = CodeSpec::new(Alphabet::new("ABCDEFGH").unwrap(), 10).unwrap();
        let mut rng = UnwrapErr(SysRng);
        let a = spec.generate(&mut rng);
        let b = spec.generate(&mut rng);
        assert_eq!(a.len(), 10);
        assert!(a.as_str().chars().all(|c| ('A'..='H').contains(&c)));
        // 8^10 possibilities: two equal draws would mean a broken source.
        assert_ne!(a.as_str(), b.as_str());
    }

    #[test]
    fn bad_alphabets_and_lengths_are_refused() {
        assert_eq!(Alphabet::new("7"), Err(GenerateError::AlphabetSize(1)));
        assert_eq!(Alphabet::new(""), Err(GenerateError::AlphabetSize(0)));
        assert_eq!(
            Alphabet::new(&"x".repeat(65)),
            Err(GenerateError::AlphabetSize(65))
        );
        assert_eq!(Alphabet::new("ab a"), Err(GenerateError::Symbol(' ')));
        assert_eq!(Alphabet::new("abca"), Err(GenerateError::Repeated('a')));
        assert_eq!(Alphabet::new("aé"), Err(GenerateError::Symbol('é')));
        assert_eq!(
            CodeSpec::new(Alphabet::digits(), 0),
            Err(GenerateError::Length(0))
        );
        assert_eq!(
            CodeSpec::new(Alphabet::digits(), MAX_CODE_LEN + 1),
            Err(GenerateError::Length(MAX_CODE_LEN + 1))
        );
    }
}
