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

    pub fn alphabet(&self) -> &Alphabet {
        &self.alphabet
    }

    pub fn length(&self) -> usize {
        self.length
    }

    /// A fresh code: `length` symbols, each uniform and independent.
    pub fn generate<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Code {
        let mut code = Code::empty();
        for _ in 0..self.length {
            code.push(self.alphabet.draw(rng));
        }
        code
    }
}
