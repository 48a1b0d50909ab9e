//! The CR/LF searcher of the parser.

/// Finds the first CR or LF.
///
/// The generic `memchr2` picks its implementation at every call; that fixed cost dominates
/// on the small reads a slow stream makes (64 bytes: ~9 ns, more than copying them), so the
/// parser picks the best searcher once (AVX2 where the CPU has it, else SSE2, which every
/// x86-64 CPU has) and keeps it.
#[derive(Clone, Copy)]
pub(super) struct Eol {
    #[cfg(target_arch = "x86_64")]
    avx2: Option<memchr::arch::x86_64::avx2::memchr::Two>,
    #[cfg(target_arch = "x86_64")]
    sse2: Option<memchr::arch::x86_64::sse2::memchr::Two>,
}

impl Eol {
    pub(super) fn new() -> Self {
        Eol {
            #[cfg(target_arch = "x86_64")]
            avx2: memchr::arch::x86_64::avx2::memchr::Two::new(b'\n', b'\r'),
            #[cfg(target_arch = "x86_64")]
            sse2: memchr::arch::x86_64::sse2::memchr::Two::new(b'\n', b'\r'),
        }
    }

    #[inline]
    pub(super) fn find(&self, haystack: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(two) = &self.avx2 {
                return two.find(haystack);
            }
            if let Some(two) = &self.sse2 {
                return two.find(haystack);
            }
        }
        memchr::memchr2(b'\n', b'\r', haystack)
    }
}
