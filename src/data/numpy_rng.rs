//! numpy's legacy `RandomState(seed).permutation(n)`: MT19937 seeded with
//! `init_genrand`, shuffled by Fisher-Yates with numpy's masked rejection sampling.
//! BIG-bench orders the answer choices it appends to a prompt this way (seed 42 for
//! every example), so matching it bit for bit reproduces BIG-bench's own prompts.

struct Mt19937 {
    mt: [u32; 624],
    i: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { mt, i: 624 }
    }

    fn twist(&mut self) {
        for k in 0..624 {
            let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % 624] & 0x7fff_ffff);
            let mut v = self.mt[(k + 397) % 624] ^ (y >> 1);
            if y & 1 == 1 {
                v ^= 0x9908_b0df;
            }
            self.mt[k] = v;
        }
        self.i = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.i >= 624 {
            self.twist();
        }
        let mut y = self.mt[self.i];
        self.i += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A uniform integer in [0, max] (numpy's legacy `random_interval`).
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for s in [1, 2, 4, 8, 16] {
            mask |= mask >> s;
        }
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

/// `numpy.random.RandomState(seed).permutation(n)`.
pub fn permutation(seed: u32, n: usize) -> Vec<usize> {
    let mut rng = Mt19937::new(seed);
    let mut x: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u32) as usize;
        x.swap(i, j);
    }
    x
}

#[cfg(test)]
mod tests {
    /// Printed by numpy 2.x: `list(np.random.RandomState(42).permutation(n))`.
    #[test]
    fn matches_numpy() {
        let want: [&[usize]; 5] = [
            &[1, 0],
            &[0, 1, 2],
            &[1, 3, 0, 2],
            &[1, 5, 0, 7, 2, 4, 3, 6],
            &[5, 0, 9, 10, 2, 1, 8, 4, 7, 3, 6],
        ];
        for w in want {
            assert_eq!(super::permutation(42, w.len()), w);
        }
    }
}
