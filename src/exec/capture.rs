//! Output cap: keep the first and last halves of the budget, count the middle.

/// Keeps at most `cap` bytes: the first `cap/2` bytes seen and the last
/// `cap - cap/2` bytes seen, counting everything in between as dropped.
#[derive(Debug)]
pub struct OutputCap {
    cap: usize,
    head: Vec<u8>,
    /// Ring of the most recent bytes after the head filled.
    tail: std::collections::VecDeque<u8>,
    total: u64,
}

impl OutputCap {
    pub fn new(cap: usize) -> Self {
        Self { cap, head: Vec::new(), tail: Default::default(), total: 0 }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let head_cap = self.cap / 2;
        if self.head.len() < head_cap {
            let n = (head_cap - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        let tail_cap = self.cap - head_cap;
        if data.len() >= tail_cap {
            self.tail.clear();
            self.tail.extend(&data[data.len() - tail_cap..]);
        } else {
            let overflow = (self.tail.len() + data.len()).saturating_sub(tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(data);
        }
    }

    /// (kept bytes, dropped byte count).
    pub fn finish(self) -> (Vec<u8>, u64) {
        let mut out = self.head;
        out.extend(self.tail);
        let dropped = self.total - out.len() as u64;
        (out, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_output_kept_whole() {
        let mut c = OutputCap::new(10);
        c.push(b"abc");
        c.push(b"de");
        assert_eq!(c.finish(), (b"abcde".to_vec(), 0));
    }

    #[test]
    fn keeps_head_and_tail_and_counts_middle() {
        let mut c = OutputCap::new(10);
        for chunk in b"0123456789abcdefghij".chunks(3) {
            c.push(chunk);
        }
        assert_eq!(c.finish(), (b"01234fghij".to_vec(), 10));
    }
}
