//! The ggml tensor types this importer reads, their block layouts, and the dequantisation
//! kernels that turn each type's blocks into f32 exactly as ggml does.

use half::{bf16, f16};

/// The ggml tensor types this importer can dequantise.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q6_K,
}

impl GgmlType {
    const ALL: [GgmlType; 8] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];

    /// The type's id in ggml's `ggml_type` enum, as stored in tensor infos.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q6_K => "Q6_K",
        }
    }

    /// (elements per block, bytes per block).
    pub(crate) fn block_layout(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            // d (f16) + 32 nibbles
            GgmlType::Q4_0 => (32, 18),
            // d, m (f16) + 32 nibbles
            GgmlType::Q4_1 => (32, 20),
            // d (f16) + 32 i8
            GgmlType::Q8_0 => (32, 34),
            // d, dmin (f16) + 12 bytes of 6-bit scales/mins + 256 nibbles
            GgmlType::Q4_K => (256, 144),
            // 128 bytes low nibbles + 64 bytes high 2-bit pairs + 16 i8 scales + d (f16)
            GgmlType::Q6_K => (256, 210),
        }
    }

    pub(crate) fn supported_list() -> String {
        let names: Vec<String> = GgmlType::ALL
            .iter()
            .map(|t| format!("{} (id {})", t.name(), t.id()))
            .collect();
        names.join(", ")
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Dequantises `bytes` of type `ty` into `out`, following ggml's `dequantize_row_*` reference
/// code operation for operation so the results are bit-identical. `bytes` holds exactly
/// `out.len()` elements (checked by `GgufFile::tensor_bytes`).
pub(crate) fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (block_elems, block_bytes) = ty.block_layout();
    let blocks = bytes
        .chunks_exact(block_bytes as usize)
        .zip(out.chunks_exact_mut(block_elems as usize));
    match ty {
        GgmlType::F32 => {
            for (x, y) in blocks {
                y[0] = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
            }
        }
        GgmlType::F16 => {
            for (x, y) in blocks {
                y[0] = f16_at(x, 0);
            }
        }
        GgmlType::BF16 => {
            for (x, y) in blocks {
                y[0] = bf16::from_bits(u16::from_le_bytes([x[0], x[1]])).to_f32();
            }
        }
        GgmlType::Q4_0 => {
            for (x, y) in blocks {
                let d = f16_at(x, 0);
                // Low nibbles are elements 0..16, high nibbles 16..32.
                let (lo, hi) = y.split_at_mut(16);
                for ((&q, a), b) in x[2..18].iter().zip(lo).zip(hi) {
                    *a = ((q & 0x0F) as i32 - 8) as f32 * d;
                    *b = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (x, y) in blocks {
                let d = f16_at(x, 0);
                let m = f16_at(x, 2);
                let (lo, hi) = y.split_at_mut(16);
                for ((&q, a), b) in x[4..20].iter().zip(lo).zip(hi) {
                    *a = (q & 0x0F) as f32 * d + m;
                    *b = (q >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (x, y) in blocks {
                let d = f16_at(x, 0);
                for (&q, v) in x[2..34].iter().zip(y) {
                    *v = q as i8 as f32 * d;
                }
            }
        }
        GgmlType::Q4_K => {
            for (x, y) in blocks {
                let d = f16_at(x, 0);
                let dmin = f16_at(x, 2);
                let scales = &x[4..16];
                // Each 32-byte group of quants holds two sub-blocks of 32: low nibbles first.
                for (j, (qs, y)) in x[16..144]
                    .chunks_exact(32)
                    .zip(y.chunks_exact_mut(64))
                    .enumerate()
                {
                    let (sc1, m1) = q4_k_scale_min(2 * j, scales);
                    let (sc2, m2) = q4_k_scale_min(2 * j + 1, scales);
                    let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
                    let (lo, hi) = y.split_at_mut(32);
                    for ((&q, a), b) in qs.iter().zip(lo).zip(hi) {
                        *a = d1 * (q & 0x0F) as f32 - min1;
                        *b = d2 * (q >> 4) as f32 - min2;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (x, y) in blocks {
                let d = f16_at(x, 208);
                // Two halves of 128 elements; each takes 64 bytes of low nibbles, 32 bytes of
                // high bit pairs and 8 scales.
                for half in 0..2 {
                    let ql = &x[64 * half..64 * half + 64];
                    let qh = &x[128 + 32 * half..128 + 32 * half + 32];
                    let sc = &x[192 + 8 * half..192 + 8 * half + 8];
                    let y = &mut y[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * sc[is] as i8 as f32 * q1 as f32;
                        y[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                        y[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                        y[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
                    }
                }
            }
        }
    }
}

/// Scale and min of sub-block `j` (0..8) of a Q4_K super-block, as ggml's `get_scale_min_k4`:
/// 6-bit values, the first four stored whole in bytes 0..8, the last four split into a low
/// nibble (bytes 8..12) and two high bits borrowed from the top of bytes 0..8.
fn q4_k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dequant(ty: GgmlType, block: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; n];
        dequantize_into(ty, block, &mut out);
        out
    }

    #[test]
    fn dequantizes_f32_f16_bf16() {
        let f32_bytes: Vec<u8> = [-1.5f32, 3.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(dequant(GgmlType::F32, &f32_bytes, 2), [-1.5, 3.25]);
        // f16 0x3C00 = 1.0, 0xC000 = -2.0, 0x3800 = 0.5, 0x7BFF = 65504 (largest finite).
        let f16_bytes = [0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38, 0xFF, 0x7B];
        assert_eq!(
            dequant(GgmlType::F16, &f16_bytes, 4),
            [1.0, -2.0, 0.5, 65504.0]
        );
        // bf16 is the top half of an f32: 0x3F80 = 1.0, 0xC040 = -3.0, 0x4049 = 3.140625.
        let bf16_bytes = [0x80, 0x3F, 0x40, 0xC0, 0x49, 0x40];
        assert_eq!(
            dequant(GgmlType::BF16, &bf16_bytes, 3),
            [1.0, -3.0, 3.140625]
        );
    }

    #[test]
    fn dequantizes_q4_0() {
        // d = 0.5 (f16 0x3800); byte j holds element j in its low nibble and element j+16 in its
        // high nibble: low = j, high = 15 - j.
        let mut block = vec![0x00, 0x38];
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequant(GgmlType::Q4_0, &block, 32);
        assert_eq!(out[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(out[3], -2.5); // (3 - 8) * 0.5
        assert_eq!(out[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(out[16], 3.5); // high nibble of byte 0 = 15: (15 - 8) * 0.5
        assert_eq!(out[20], 1.5); // high nibble of byte 4 = 11: (11 - 8) * 0.5
        assert_eq!(out[31], -4.0); // high nibble of byte 15 = 0: (0 - 8) * 0.5
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(out[16 + j], (15.0 - j as f32 - 8.0) * 0.5);
        }
    }

    #[test]
    fn dequantizes_q4_1() {
        // d = 0.25 (0x3400), m = -1.0 (0xBC00), then the same nibble layout as Q4_0.
        let mut block = vec![0x00, 0x34, 0x00, 0xBC];
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequant(GgmlType::Q4_1, &block, 32);
        assert_eq!(out[0], -1.0); // 0 * 0.25 - 1
        assert_eq!(out[5], 0.25); // 5 * 0.25 - 1
        assert_eq!(out[16], 2.75); // 15 * 0.25 - 1
        assert_eq!(out[31], -1.0); // 0 * 0.25 - 1
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 0.25 - 1.0);
            assert_eq!(out[16 + j], (15 - j) as f32 * 0.25 - 1.0);
        }
    }

    #[test]
    fn dequantizes_q8_0() {
        // d = 0.5; quant j = j - 16 as i8, except quant 0 = -128 (byte 0x80).
        let mut block = vec![0x00, 0x38];
        block.extend((0..32i32).map(|j| (j - 16) as i8 as u8));
        block[2] = 0x80;
        let out = dequant(GgmlType::Q8_0, &block, 32);
        assert_eq!(out[0], -64.0); // -128 * 0.5
        assert_eq!(out[1], -7.5); // -15 * 0.5
        assert_eq!(out[16], 0.0);
        assert_eq!(out[31], 7.5); // 15 * 0.5
        for (j, &v) in out.iter().enumerate().skip(1) {
            assert_eq!(v, (j as f32 - 16.0) * 0.5);
        }
    }

    /// Sub-block scales and mins used by the Q4_K tests, and their 12-byte packing: bytes 0..4
    /// are sc[0..4] plus the top two bits of sc[4..8] in bits 6..8, bytes 4..8 the same for the
    /// mins, bytes 8..12 the low nibbles of sc[4..8] (low) and m[4..8] (high). For example
    /// byte 0 = 1 | (37 >> 4) << 6 = 129 and byte 8 = (37 & 15) | (50 & 15) << 4 = 37.
    const Q4_K_SC: [u8; 8] = [1, 2, 3, 4, 37, 40, 50, 63];
    const Q4_K_M: [u8; 8] = [5, 6, 7, 8, 50, 33, 20, 1];
    const Q4_K_PACKED: [u8; 12] = [129, 130, 195, 196, 197, 134, 71, 8, 37, 24, 66, 31];

    #[test]
    fn unpacks_q4_k_scales() {
        for j in 0..8 {
            assert_eq!(
                q4_k_scale_min(j, &Q4_K_PACKED),
                (Q4_K_SC[j], Q4_K_M[j]),
                "sub-block {j}"
            );
        }
    }

    #[test]
    fn dequantizes_q4_k() {
        // d = 0.5 (0x3800), dmin = 0.25 (0x3400); quant byte i = (i % 16) | (15 - i % 16) << 4.
        let mut block = vec![0x00, 0x38, 0x00, 0x34];
        block.extend(Q4_K_PACKED);
        block.extend((0..128u8).map(|i| (i % 16) | ((15 - i % 16) << 4)));
        let out = dequant(GgmlType::Q4_K, &block, 256);
        // Element 0: low nibble of byte 0 = 0, sub-block 0: 0.5 * 1 * 0 - 0.25 * 5.
        assert_eq!(out[0], -1.25);
        // Element 163: 64-element chunk 2, second half -> high nibble of byte 64 + 3 = 15 - 3 = 12,
        // sub-block 5: 0.5 * 40 * 12 - 0.25 * 33 = 240 - 8.25.
        assert_eq!(out[163], 231.75);
        // Element 200: chunk 3, first half -> low nibble of byte 96 + 8 = 104 % 16 = 8,
        // sub-block 6: 0.5 * 50 * 8 - 0.25 * 20 = 200 - 5.
        assert_eq!(out[200], 195.0);
        // Element 255: high nibble of byte 127 = 15 - 15 = 0, sub-block 7: 0 - 0.25 * 1.
        assert_eq!(out[255], -0.25);
        for (e, &v) in out.iter().enumerate() {
            let byte = block[16 + (e / 64) * 32 + e % 32];
            let nibble = if e % 64 < 32 { byte & 15 } else { byte >> 4 };
            let sub = e / 32;
            assert_eq!(
                v,
                0.5 * Q4_K_SC[sub] as f32 * nibble as f32 - 0.25 * Q4_K_M[sub] as f32,
                "element {e}"
            );
        }
    }

    #[test]
    fn dequantizes_q6_k() {
        // ql[i] = i, qh[i] = 3 * i, scales[i] = i - 8, d = 0.25 (0x3400) at the end.
        let mut block: Vec<u8> = (0..128u8).collect();
        block.extend((0..64u8).map(|i| 3 * i));
        block.extend((0..16i8).map(|i| (i - 8) as u8));
        block.extend([0x00, 0x34]);
        let out = dequant(GgmlType::Q6_K, &block, 256);
        // Element 0: low nibble of ql[0] = 0, bits 0..2 of qh[0] = 0 -> q = 0 - 32; scale -8:
        // 0.25 * -8 * -32.
        assert_eq!(out[0], 64.0);
        // Element 100: half 0, quarter 3, l = 4 -> high nibble of ql[36] = 2, bits 6..8 of
        // qh[4] = 12 -> 0, q = 2 - 32 = -30; scale[100 / 16 = 6] = -2: 0.25 * -2 * -30.
        assert_eq!(out[100], 15.0);
        // Element 170: half 1, quarter 1, l = 10 -> low nibble of ql[64 + 32 + 10] = 106 & 15 = 10,
        // bits 2..4 of qh[32 + 10] = 126 -> 3, q = (10 | 3 << 4) - 32 = 26; scale[10] = 2:
        // 0.25 * 2 * 26.
        assert_eq!(out[170], 13.0);
        for (e, &v) in out.iter().enumerate() {
            let (half, quarter, l) = (e / 128, e % 128 / 32, e % 32);
            let ql = block[64 * half + 32 * (quarter % 2) + l];
            let low = if quarter < 2 { ql & 15 } else { ql >> 4 };
            let high = (block[128 + 32 * half + l] >> (2 * quarter)) & 3;
            let q = (low | (high << 4)) as i32 - 32;
            let scale = block[192 + e / 16] as i8;
            assert_eq!(v, 0.25 * scale as f32 * q as f32, "element {e}");
        }
    }
}
