//! Safe strided f32 matrix products on gemm, for the fused ops and the routed
//! CPU paths: views carry their strides, so transposes cost nothing, and a
//! product can accumulate into its destination (`dst += lhs · rhs`), which is
//! how a LoRA branch joins the frozen product without a separate add pass.

/// A read-only view of an f32 matrix with arbitrary row and column strides.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// A `[rows, cols]` matrix whose rows start `row_stride` apart (a column block
    /// of a wider row-major matrix: one attention head of a `[tokens, heads·d_kv]`
    /// projection).
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transposed view.
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// One past the largest index the view addresses (0 when empty).
    fn span(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// `dst = scale · lhs · rhs`, or `dst += scale · lhs · rhs` when `accumulate`;
/// `dst` is row-major `[lhs.rows, rhs.cols]`. `parallel` splits the product
/// over the rayon pool (worth it for large products only).
pub fn gemm(dst: &mut [f32], lhs: Mat<'_>, rhs: Mat<'_>, scale: f32, accumulate: bool, parallel: bool) {
    let n = rhs.cols;
    gemm_strided(dst, n, lhs, rhs, scale, accumulate, parallel);
}

/// [`gemm`] into a destination whose rows start `dst_row_stride` apart (a
/// column block of a wider row-major matrix).
pub fn gemm_strided(
    dst: &mut [f32],
    dst_row_stride: usize,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    scale: f32,
    accumulate: bool,
    parallel: bool,
) {
    let (m, n) = check_operands(lhs, rhs);
    assert!(dst_row_stride >= n, "gemm: destination rows overlap");
    assert!(
        m == 0 || n == 0 || dst.len() >= (m - 1) * dst_row_stride + n,
        "gemm: destination too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every index the strides address is inside the slices (asserted
    // above), and `dst` is not aliased by `lhs` or `rhs` (borrow rules).
    unsafe {
        raw(
            dst.as_mut_ptr(),
            dst_row_stride,
            lhs,
            rhs,
            scale,
            accumulate,
            parallel,
        )
    }
}

/// Asserts that `lhs · rhs` is defined and both views lie inside their data;
/// the product's `(rows, cols)`.
fn check_operands(lhs: Mat<'_>, rhs: Mat<'_>) -> (usize, usize) {
    assert_eq!(lhs.cols, rhs.rows, "gemm: inner dimensions differ");
    assert!(
        lhs.data.len() >= lhs.span() && rhs.data.len() >= rhs.span(),
        "gemm: a view addresses past its data"
    );
    (lhs.rows, rhs.cols)
}

/// The gemm crate's product into `dst` (row-major, rows `dst_row_stride` apart),
/// `dst = scale·lhs·rhs`, or `dst += scale·lhs·rhs` when `accumulate`.
///
/// # Safety
/// `dst` must be valid for writes of the `[lhs.rows, rhs.cols]` block at that row
/// stride (and for reads when `accumulate`), must not overlap the operands, and
/// the operands' views must lie inside their slices.
unsafe fn raw(
    dst: *mut f32,
    dst_row_stride: usize,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    scale: f32,
    accumulate: bool,
    parallel: bool,
) {
    let parallelism = match rayon::current_num_threads() {
        t if parallel && t > 1 => gemm::Parallelism::Rayon(t),
        _ => gemm::Parallelism::None,
    };
    // SAFETY: the caller's contract (above) is what gemm::gemm requires.
    unsafe {
        gemm::gemm(
            lhs.rows,
            rhs.cols,
            lhs.cols,
            dst,
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `scale · lhs · rhs` into a new row-major `[lhs.rows, rhs.cols]` buffer, which
/// the product writes without it being zero-filled first (at small sizes that
/// fill is a measurable share of a training step).
pub fn gemm_new(lhs: Mat<'_>, rhs: Mat<'_>, scale: f32, parallel: bool) -> Vec<f32> {
    let (m, n) = check_operands(lhs, rhs);
    let len = m * n;
    if len == 0 || lhs.cols == 0 {
        return vec![0f32; len];
    }
    let mut dst: Vec<f32> = Vec::with_capacity(len);
    // SAFETY: `dst` has capacity for the `m × n` row-major result; without
    // `accumulate` gemm computes `dst = scale · lhs · rhs` and writes every
    // element of it (k > 0) without reading any first, so after the call all
    // `len` elements are initialised and `set_len` is sound. The operands are
    // inside their slices (asserted above) and do not alias `dst`.
    unsafe {
        raw(dst.as_mut_ptr(), n, lhs, rhs, scale, false, parallel);
        dst.set_len(len);
    }
    dst
}

/// `dst[m, n] = lhs[m, k] · rhs`, row-major f32, on the calling thread;
/// `rhs` is `[k, n]`, or `[n, k]` read transposed when `rhs_transposed`.
pub fn gemm_f32(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    (m, n, k): (usize, usize, usize),
    rhs_transposed: bool,
) {
    let rhs = if rhs_transposed {
        Mat::new(rhs, n, k).t()
    } else {
        Mat::new(rhs, k, n)
    };
    gemm(dst, Mat::new(lhs, m, k), rhs, 1.0, false, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_product_equals_one_into_zeros() {
        let a: Vec<f32> = (0..35).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..21).map(|i| (i as f32 * 0.11).cos()).collect();
        // a [5, 7] · bᵀ with b [3, 7]: [5, 3].
        let fresh = gemm_new(Mat::new(&a, 5, 7), Mat::new(&b, 3, 7).t(), 0.5, false);
        let mut into = vec![0f32; 15];
        gemm(
            &mut into,
            Mat::new(&a, 5, 7),
            Mat::new(&b, 3, 7).t(),
            0.5,
            false,
            false,
        );
        assert_eq!(fresh, into);
        assert_eq!(
            gemm_new(Mat::new(&a, 5, 0), Mat::new(&b, 0, 3), 1.0, false),
            vec![0f32; 15]
        );
    }

    #[test]
    fn products_of_transposed_views_accumulate() {
        // a [2, 3], b [2, 3]: a · bᵀ is [2, 2].
        let a = [1f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1f32, 0.0, -1.0, 2.0, 1.0, 0.0];
        let mut dst = [10f32, 20.0, 30.0, 40.0];
        gemm(
            &mut dst,
            Mat::new(&a, 2, 3),
            Mat::new(&b, 2, 3).t(),
            0.5,
            true,
            false,
        );
        assert_eq!(dst, [10.0 - 1.0, 20.0 + 2.0, 30.0 - 1.0, 40.0 + 6.5]);
        // aᵀ · b is [3, 3].
        let mut dst = [0f32; 9];
        gemm(
            &mut dst,
            Mat::new(&a, 2, 3).t(),
            Mat::new(&b, 2, 3),
            1.0,
            false,
            true,
        );
        assert_eq!(dst, [9.0, 4.0, -1.0, 12.0, 5.0, -2.0, 15.0, 6.0, -3.0]);
    }
}
