//! A plain row-major f32 matrix, and the few dense operations the CPU reference needs.
//! GEMMs go through faer (multi-threaded); nothing here hand-rolls BLAS.

use faer::linalg::matmul::{matmul, triangular::BlockStructure};
use faer::{Accum, MatMut, MatRef, Par};

/// Row-major matrix `[rows, cols]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat { rows, cols, data: vec![0.0; rows * cols] }
    }

    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "Mat::from_vec: {rows}x{cols} needs {} values", rows * cols);
        Mat { rows, cols, data }
    }

    #[inline]
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    #[inline]
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        let c = self.cols;
        &mut self.data[r * c..(r + 1) * c]
    }

    pub fn view(&self) -> MatRef<'_, f32> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.cols)
    }

    pub fn view_mut(&mut self) -> MatMut<'_, f32> {
        MatMut::from_row_major_slice_mut(&mut self.data, self.rows, self.cols)
    }

    /// Rows `idx` (in the given order).
    pub fn gather_rows(&self, idx: &[usize]) -> Mat {
        let mut out = Vec::with_capacity(idx.len() * self.cols);
        for &r in idx {
            out.extend_from_slice(self.row(r));
        }
        Mat::from_vec(idx.len(), self.cols, out)
    }

    /// Columns `idx` (in the given order).
    pub fn gather_cols(&self, idx: &[usize]) -> Mat {
        let mut out = Vec::with_capacity(idx.len() * self.rows);
        for r in 0..self.rows {
            let row = self.row(r);
            out.extend(idx.iter().map(|&c| row[c]));
        }
        Mat::from_vec(self.rows, idx.len(), out)
    }

    /// A `[rows, ncols]` matrix of zeros with `self`'s columns placed at `idx`.
    pub fn scatter_cols(&self, idx: &[usize], ncols: usize) -> Mat {
        let mut out = Mat::zeros(self.rows, ncols);
        for r in 0..self.rows {
            let src = self.row(r);
            let dst = out.row_mut(r);
            for (k, &c) in idx.iter().enumerate() {
                dst[c] = src[k];
            }
        }
        out
    }

    pub fn transpose(&self) -> Mat {
        let mut out = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.data[c * self.rows + r] = self.data[r * self.cols + c];
            }
        }
        out
    }

    pub fn is_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }

    /// `self += other`.
    pub fn add_assign(&mut self, other: &Mat) {
        debug_assert_eq!((self.rows, self.cols), (other.rows, other.cols));
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += *b;
        }
    }
}

/// `X Wᵀ (+ b)`: X is `[T, in]`, W is `[out, in]` (HF layout), the result `[T, out]`.
pub fn linear(x: &Mat, w: &Mat, bias: Option<&[f32]>) -> Mat {
    assert_eq!(x.cols, w.cols, "linear: input width {} vs weight in-features {}", x.cols, w.cols);
    let mut y = Mat::zeros(x.rows, w.rows);
    if x.rows > 0 && w.rows > 0 {
        matmul(y.view_mut(), Accum::Replace, x.view(), w.view().transpose(), 1.0f32, Par::rayon(0));
    }
    if let Some(b) = bias {
        for r in 0..y.rows {
            for (v, bb) in y.row_mut(r).iter_mut().zip(b) {
                *v += *bb;
            }
        }
    }
    y
}

/// Row-major f64 square matrix used for the statistics `H = Σ x xᵀ`.
#[derive(Clone, Debug)]
pub struct Gram {
    pub n: usize,
    pub data: Vec<f64>,
}

impl Gram {
    pub fn zeros(n: usize) -> Self {
        Gram { n, data: vec![0.0; n * n] }
    }
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.n + j]
    }
    pub fn diag(&self) -> Vec<f64> {
        (0..self.n).map(|i| self.get(i, i)).collect()
    }
    pub fn view(&self) -> MatRef<'_, f64> {
        MatRef::from_row_major_slice(&self.data, self.n, self.n)
    }
    /// `H += Xᵀ X` for X `[T, n]`, accumulated in f64 in chunks of rows so memory stays bounded.
    pub fn accumulate(&mut self, x: &Mat) {
        assert_eq!(x.cols, self.n);
        const CHUNK: usize = 4096;
        let mut buf: Vec<f64> = Vec::new();
        let mut r0 = 0;
        while r0 < x.rows {
            let r1 = (r0 + CHUNK).min(x.rows);
            buf.clear();
            buf.extend(x.data[r0 * x.cols..r1 * x.cols].iter().map(|&v| v as f64));
            let xc = MatRef::from_row_major_slice(&buf, r1 - r0, x.cols);
            let h = MatMut::from_row_major_slice_mut(&mut self.data, self.n, self.n);
            // only the lower triangle (a syrk): half the FLOPs of a full product
            faer::linalg::matmul::triangular::matmul(
                h,
                BlockStructure::TriangularLower,
                Accum::Add,
                xc.transpose(),
                BlockStructure::Rectangular,
                xc,
                BlockStructure::Rectangular,
                1.0f64,
                Par::rayon(0),
            );
            r0 = r1;
        }
        // mirror the lower triangle into the upper one
        let n = self.n;
        for i in 0..n {
            for j in 0..i {
                self.data[j * n + i] = self.data[i * n + j];
            }
        }
    }
    /// The submatrix `H[rows, cols]` as a faer matrix.
    pub fn sub(&self, rows: &[usize], cols: &[usize]) -> faer::Mat<f64> {
        faer::Mat::from_fn(rows.len(), cols.len(), |i, j| self.get(rows[i], cols[j]))
    }
}
