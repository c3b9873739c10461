//! Secret bytes on the stack: a fixed buffer and the length in use, wiped
//! (only the part in use, which is all that is ever written) on drop.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Up to `N` bytes, filled from the front; wiped on drop.
#[derive(Clone)]
pub(crate) struct WipedBytes<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> WipedBytes<N> {
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    /// Appends one byte; past `N` nothing is appended.
    pub(crate) fn push(&mut self, byte: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    /// Appends `count` bytes that `fill` writes; past `N` nothing is appended.
    pub(crate) fn push_with(&mut self, count: usize, fill: impl FnOnce(&mut [u8])) {
        let end = self.len + count;
        if let Some(slot) = self.bytes.get_mut(self.len..end) {
            fill(slot);
            self.len = end;
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

// Only `bytes[..len]` is ever written (`push`/`push_with` are the writers),
// so wiping that prefix wipes the secret; volatile writes cost per byte and
// the verification path drops one of these every time.
impl<const N: usize> Zeroize for WipedBytes<N> {
    fn zeroize(&mut self) {
        if let Some(used) = self.bytes.get_mut(..self.len) {
            used.zeroize();
        }
        self.len = 0;
    }
}

impl<const N: usize> Drop for WipedBytes<N> {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl<const N: usize> ZeroizeOnDrop for WipedBytes<N> {}
