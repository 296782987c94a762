//! Embedding tables in int8: the largest tensor of a small encoder (all-MiniLM-L6-v2's 30,522
//! × 384 word embeddings are half its weights) is only ever read a row at a time.

use super::quantize_value;

/// A `[rows, dim]` table quantized row by row: symmetric, `scale_r = max |row r| / 127`, the
/// same rounding as the int8 weights. A quarter of the f32 table's memory.
#[derive(Clone)]
pub struct QuantizedTable {
    dim: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
}

impl QuantizedTable {
    /// `table`: row-major `[rows, dim]`. Panics if `dim` is 0 or does not divide its length.
    pub fn quantize(table: &[f32], dim: usize) -> Self {
        assert!(
            dim > 0 && table.len().is_multiple_of(dim),
            "QuantizedTable::quantize: {} values do not form rows of {dim}",
            table.len()
        );
        let mut values = vec![0i8; table.len()];
        let scales = table
            .chunks_exact(dim)
            .zip(values.chunks_exact_mut(dim))
            .map(|(row, q)| {
                let max_abs = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let inv = if max_abs > 0.0 { 127.0 / max_abs } else { 0.0 };
                for (q, &v) in q.iter_mut().zip(row) {
                    *q = quantize_value(v, inv);
                }
                max_abs / 127.0
            })
            .collect();
        QuantizedTable {
            dim,
            values,
            scales,
        }
    }

    pub fn rows(&self) -> usize {
        self.scales.len()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Bytes held, for memory reports.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.values.len() + self.scales.len() * 4
    }

    /// `out[i] = row ids[i]`, dequantized (`q · scale`). Panics with the id if one is out of
    /// range, or if `out` is not `ids.len() · dim` long.
    pub fn gather(&self, ids: &[usize], out: &mut [f32]) {
        assert_eq!(
            out.len(),
            ids.len() * self.dim,
            "QuantizedTable::gather: out has {} values, {} rows of {} need {}",
            out.len(),
            ids.len(),
            self.dim,
            ids.len() * self.dim
        );
        for (&id, out) in ids.iter().zip(out.chunks_exact_mut(self.dim)) {
            assert!(
                id < self.rows(),
                "QuantizedTable::gather: id {id} is outside the table's {} rows",
                self.rows()
            );
            let scale = self.scales[id];
            let row = &self.values[id * self.dim..(id + 1) * self.dim];
            for (o, &q) in out.iter_mut().zip(row) {
                *o = f32::from(q) * scale;
            }
        }
    }
}

impl std::fmt::Debug for QuantizedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedTable")
            .field("rows", &self.rows())
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value within half a step of its row's scale; a zero row stays zero; a quarter of
    /// the memory.
    #[test]
    fn rows_come_back_within_half_a_step() {
        let dim = 37;
        // Rows of growing scale, values spread over [-1, 1) times the row's scale.
        let mut table: Vec<f32> = (0..50 * dim)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + i / dim) as f32)
            .collect();
        table[3 * dim..4 * dim].fill(0.0);
        let q = QuantizedTable::quantize(&table, dim);
        let ids: Vec<usize> = (0..50).rev().collect();
        let mut out = vec![f32::NAN; ids.len() * dim];
        q.gather(&ids, &mut out);
        for (&id, got) in ids.iter().zip(out.chunks(dim)) {
            let want = &table[id * dim..(id + 1) * dim];
            let step = want.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= step / 2.0 * 1.0001, "row {id}: {g} vs {w}");
            }
        }
        assert!(
            out[(50 - 1 - 3) * dim..(50 - 3) * dim]
                .iter()
                .all(|&v| v == 0.0)
        );
        assert!(q.memory_bytes() < table.len() * 4 / 3);
    }

    #[test]
    #[should_panic(expected = "id 50 is outside the table's 50 rows")]
    fn an_id_past_the_table_panics() {
        let q = QuantizedTable::quantize(&[1.0; 50 * 4], 4);
        q.gather(&[50], &mut [0.0; 4]);
    }
}
