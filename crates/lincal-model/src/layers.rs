//! Pieces shared by the Llama and GPT-NeoX decoders: rotary embeddings, masks, the KV cache
//! and attention over it.

use tch::{Kind, Tensor};

/// Per-layer key/value buffers allocated once for the whole generation, so decoding writes
/// in place instead of concatenating (which would copy the whole cache every token).
///
/// Where a forward pass writes is a device tensor of slot indices rather than a host integer,
/// and how many leading slots it attends over is fixed per call: together they let one decode
/// step be captured in a CUDA graph and replayed for every token (see `generate`).
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    /// Where the next forward pass writes its new keys and values.
    slots: Slots,
    /// Leading slots the next forward pass attends over (a key mask `[B, visible]` hides
    /// the unwritten and padded ones).
    visible: i64,
}

/// Cache slots of the next forward pass's tokens.
enum Slots {
    /// `[T]`: token `t` of every row goes to slot `slots[t]` (a prefill, or a batch whose rows
    /// advance together).
    Shared(Tensor),
    /// `[B]`: one new token per row, row `b`'s to slot `slots[b]` (rows at different lengths,
    /// as in continuous batching).
    PerRow(Tensor),
}

impl KvCache {
    pub fn new(
        num_layers: i64,
        batch: i64,
        kv_heads: i64,
        capacity: i64,
        head_dim: i64,
        options: (Kind, tch::Device),
    ) -> Self {
        let layers = (0..num_layers)
            .map(|_| {
                (
                    Tensor::zeros([batch, kv_heads, capacity, head_dim], options),
                    Tensor::zeros([batch, kv_heads, capacity, head_dim], options),
                )
            })
            .collect();
        KvCache {
            layers,
            slots: Slots::Shared(Tensor::zeros([0], (Kind::Int64, options.1))),
            visible: 0,
        }
    }

    /// Each layer's keys and values `[B, H, capacity, D]`.
    #[cfg(test)]
    pub(crate) fn layers(&self) -> &[(Tensor, Tensor)] {
        &self.layers
    }

    pub fn capacity(&self) -> i64 {
        self.layers.first().map_or(0, |(k, _)| k.size()[2])
    }

    /// Makes the next forward pass write its `T` new keys and values at `slots` (`[T]`, on
    /// the cache's device) and attend over the first `visible` slots.
    pub fn set_window(&mut self, slots: &Tensor, visible: i64) {
        self.set_visible(visible);
        self.slots = Slots::Shared(slots.shallow_clone());
    }

    /// Makes the next forward pass, of one token per row, write row `b`'s key and value at
    /// slot `slots[b]` (`[B]`, on the cache's device) and attend over the first `visible`
    /// slots.
    pub fn set_row_window(&mut self, slots: &Tensor, visible: i64) {
        self.set_visible(visible);
        self.slots = Slots::PerRow(slots.shallow_clone());
    }

    fn set_visible(&mut self, visible: i64) {
        assert!(
            visible <= self.capacity(),
            "KV cache holds {} tokens, asked to attend over {visible}",
            self.capacity()
        );
        self.visible = visible;
    }

    /// The cache of rows `start..start + rows`: views sharing this cache's memory, so what a
    /// forward pass writes through them lands here.
    pub fn rows(&self, start: i64, rows: i64) -> KvCache {
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|(k, v)| (k.narrow(0, start, rows), v.narrow(0, start, rows)))
                .collect(),
            slots: Slots::Shared(Tensor::zeros([0], (Kind::Int64, tch::Device::Cpu))),
            visible: 0,
        }
    }

    /// Copies `len` slots of row `src_row` of `src`, from slot `src_start` on, into slots
    /// `0..len` of row `dst_row`, every layer: a sequence prefilled on its own joins a batch.
    pub fn copy_row(
        &mut self,
        dst_row: i64,
        src: &KvCache,
        src_row: i64,
        src_start: i64,
        len: i64,
    ) {
        for ((dk, dv), (sk, sv)) in self.layers.iter_mut().zip(&src.layers) {
            for (dst, src) in [(dk, sk), (dv, sv)] {
                dst.narrow(0, dst_row, 1)
                    .narrow(2, 0, len)
                    .copy_(&src.narrow(0, src_row, 1).narrow(2, src_start, len));
            }
        }
    }
}

/// `inv_freq` for rotary embeddings over `dim` channels, with optional Llama-3 or linear scaling.
pub fn rotary_inv_freq(
    dim: i64,
    theta: f64,
    scaling: Option<&crate::config::RopeScaling>,
) -> Vec<f64> {
    let mut inv_freq: Vec<f64> = (0..dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64))
        .collect();
    if let Some(s) = scaling {
        match s.rope_type.as_str() {
            "linear" => inv_freq.iter_mut().for_each(|f| *f /= s.factor),
            "llama3" => {
                let low = s.low_freq_factor.unwrap_or(1.0);
                let high = s.high_freq_factor.unwrap_or(4.0);
                let old_len = s.original_max_position_embeddings.unwrap_or(8192) as f64;
                let (low_wavelen, high_wavelen) = (old_len / low, old_len / high);
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= s.factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old_len / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                    }
                }
            }
            _ => {}
        }
    }
    inv_freq
}

/// cos and sine tables `[B, 1, T, dim]` for integer `positions` `[B, T]`, computed in f32 and
/// cast to `kind` as transformers does, except that the sine's first half is negated: what
/// transformers' `rotate_half` negates in every layer's queries and keys is negated here once
/// per pass (see [`apply_rotary`]).
pub fn rotary_cos_sin(inv_freq: &Tensor, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
    let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.view([1, 1, -1]);
    let (cos, sin) = (freqs.cos(), freqs.sin());
    let cos = Tensor::cat(&[&cos, &cos], -1).unsqueeze(1);
    let signed_sin = Tensor::cat(&[-&sin, sin], -1).unsqueeze(1);
    (cos.to_kind(kind), signed_sin.to_kind(kind))
}

/// What every decoder layer of one forward pass reads besides its input: the rotary tables of
/// the positions and the attention bias (`None`: plain causal attention).
pub struct LayerContext {
    pub cos: Tensor,
    pub signed_sin: Tensor,
    pub bias: Option<Tensor>,
}

impl LayerContext {
    /// For `positions` `[B, T]` and a boolean `mask` (see [`attention_mask`]), in `kind`.
    pub fn new(inv_freq: &Tensor, positions: &Tensor, mask: Option<&Tensor>, kind: Kind) -> Self {
        let (cos, signed_sin) = rotary_cos_sin(inv_freq, positions, kind);
        LayerContext {
            cos,
            signed_sin,
            bias: mask.map(|m| attention_bias(m, kind)),
        }
    }
}

/// Rotates the first `cos.size()[-1]` channels of `x` `[B, heads, T, head_dim]` (all of them
/// for Llama, a fraction for GPT-NeoX), "rotate half" layout, with the tables of
/// [`rotary_cos_sin`] (or of `x` `[B, T, heads, head_dim]` with those tables' axes 1 and 2
/// swapped). transformers computes `x·cos + cat(−x₂, x₁)·sin`; here
/// `roll(x)·signed_sin = cat(x₂, x₁)·cat(−sin₁, sin₂)` gives the same products bit for bit
/// (negation is exact) in one kernel fewer where `x` is contiguous, as in decode steps, which
/// feel it in every layer (`roll` copies a strided `x` first: no saving there, no loss).
/// On a GPU one kernel computes the same ([`crate::kernels::rotary`]; four kernels forward
/// and four backward otherwise).
pub fn apply_rotary(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Tensor {
    crate::kernels::rotary(x, cos, signed_sin)
        .unwrap_or_else(|| apply_rotary_unfused(x, cos, signed_sin))
}

/// [`apply_rotary`] by PyTorch's operations: the CPU's path and the fused kernel's reference.
pub fn apply_rotary_unfused(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Tensor {
    let rotary_dim = *cos.size().last().expect("cos has a last dim");
    let head_dim = *x.size().last().expect("x has a last dim");
    let (rot, pass) = if rotary_dim == head_dim {
        (x.shallow_clone(), None)
    } else {
        (
            x.narrow(-1, 0, rotary_dim),
            Some(x.narrow(-1, rotary_dim, head_dim - rotary_dim)),
        )
    };
    let out = &rot * cos + rot.roll([rotary_dim / 2], [-1]) * signed_sin;
    match pass {
        None => out,
        Some(pass) => Tensor::cat(&[out, pass], -1),
    }
}

/// Positions for left-padded rows: real tokens count from 0, pads get 0 (as transformers).
pub fn positions_from_mask(attention_mask: &Tensor) -> Tensor {
    (attention_mask.to_kind(Kind::Int64).cumsum(-1, Kind::Int64) - 1).clamp_min(0)
}

/// Boolean attention mask `[B, 1, T, S]` for `T` new queries at key slots
/// `first_query_slot..first_query_slot + T` over `S` keys, given which keys are real tokens
/// (`key_mask` `[B, S]`, 1 = real). Causal over slots; every query also sees itself, so pad rows
/// are never fully masked (a fully masked row would be NaN, and NaN pad keys would poison real
/// rows through 0·NaN).
pub fn attention_mask(key_mask: &Tensor, first_query_slot: i64, query_len: i64) -> Tensor {
    let key_len = key_mask.size()[1];
    let device = key_mask.device();
    let query_pos = Tensor::arange_start(
        first_query_slot,
        first_query_slot + query_len,
        (Kind::Int64, device),
    )
    .view([query_len, 1]);
    let key_pos = Tensor::arange(key_len, (Kind::Int64, device)).view([1, key_len]);
    let causal = key_pos.le_tensor(&query_pos);
    let diagonal = key_pos.eq_tensor(&query_pos);
    let real = key_mask.to_kind(Kind::Bool).view([-1, 1, 1, key_len]);
    causal
        .unsqueeze(0)
        .unsqueeze(0)
        .logical_and(&real)
        .logical_or(&diagonal.unsqueeze(0).unsqueeze(0))
}

/// Boolean attention mask `[B, 1, T, T]` for rows that hold several sequences: causal over
/// slots, and a token sees the earlier tokens of its own segment (`segments` `[B, T]`) and,
/// when `shared` is given, those of that segment, a prefix the others continue. Every token
/// sees itself.
pub fn segment_mask(segments: &Tensor, shared: Option<i64>) -> Tensor {
    let width = segments.size()[1];
    let causal = Tensor::ones([width, width], (Kind::Bool, segments.device())).tril(0);
    let keys = segments.unsqueeze(1);
    let mut visible = segments.unsqueeze(2).eq_tensor(&keys);
    if let Some(shared) = shared {
        visible = visible.logical_or(&keys.eq(shared));
    }
    visible.logical_and(&causal).unsqueeze(1)
}

/// The boolean mask as an additive bias (0 where allowed, -inf where hidden) of the model's
/// precision: converted once per forward pass instead of once per layer inside attention.
pub fn attention_bias(mask: &Tensor, kind: Kind) -> Tensor {
    Tensor::zeros(mask.size(), (kind, mask.device()))
        .masked_fill(&mask.logical_not(), f64::NEG_INFINITY)
}

/// Scaled dot-product attention of `q` `[B, H, T, D]` over `k`, `v` `[B, Hkv, T, D]`.
/// `bias` `None` means plain causal (training, no padding before real tokens), which lets
/// PyTorch pick its flash kernel. With a cache the new keys and values are stored at the
/// cache's slots and the queries attend over its visible window; `bias` is then required.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    cache: Option<(&mut KvCache, usize)>,
) -> Tensor {
    match cache {
        None if bias.is_none() => Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            None::<Tensor>,
            0.0,
            true,
            None,
            q.size()[1] != k.size()[1],
        ),
        None => attend_grouped(q, k, v, bias),
        Some((cache, layer)) => {
            let visible = cache.visible;
            let (ck, cv) = &mut cache.layers[layer];
            match &cache.slots {
                Slots::Shared(slots) => {
                    let _ = ck.index_copy_(2, slots, k);
                    let _ = cv.index_copy_(2, slots, v);
                }
                Slots::PerRow(slots) => {
                    let index = slots.view([-1, 1, 1, 1]).expand(k.size(), false);
                    let _ = ck.scatter_(2, &index, k);
                    let _ = cv.scatter_(2, &index, v);
                }
            }
            attend_grouped(
                q,
                &ck.narrow(2, 0, visible),
                &cv.narrow(2, 0, visible),
                Some(bias.expect("cached attention needs a mask")),
            )
        }
    }
}

/// Attention with a mask where query heads `h = kv·G + j` share key head `kv`: each group of
/// `G` query heads is folded into the query axis, so the kernel sees equal head counts and no
/// key or value is copied `G` times (masked attention kernels do not all take grouped heads).
fn attend_grouped(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let (b, heads, t, d) = q.size4().expect("q is [B, H, T, D]");
    let group = heads / k.size()[1];
    if group == 1 {
        return Tensor::scaled_dot_product_attention(q, k, v, bias, 0.0, false, None, false);
    }
    let q = q.reshape([b, heads / group, group * t, d]);
    // The folded query rows are (head, position) pairs, each needing its position's mask row;
    // a decode step's single position broadcasts as it is (no copy in every layer).
    let bias = bias.map(|m| {
        let s = m.size();
        if t == 1 {
            return m.shallow_clone();
        }
        m.unsqueeze(2)
            .expand([s[0], s[1], group, s[2], s[3]], false)
            .reshape([s[0], s[1], group * s[2], s[3]])
    });
    Tensor::scaled_dot_product_attention(&q, k, v, bias.as_ref(), 0.0, false, None, false)
        .reshape([b, heads, t, d])
}

/// RMSNorm as transformers computes it: normalise in f32, round to the input's precision, then
/// scale. PyTorch's `rms_norm` does the first two in one kernel on CUDA (eight element-wise
/// kernels as written out; on CPUs it runs those same operations); the weight's product
/// stays apart so that it rounds where transformers' does.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let hidden = *x.size().last().expect("x has a last dim");
    weight * x.rms_norm([hidden], None::<Tensor>, eps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_and_hides_left_padding() {
        // Row 0: one pad then two real tokens; row 1: three real tokens.
        let key_mask = Tensor::from_slice2(&[[0i64, 1, 1], [1, 1, 1]]);
        let mask = attention_mask(&key_mask, 0, 3);
        let got: Vec<Vec<bool>> = (0..3)
            .map(|i| Vec::<bool>::try_from(mask.get(0).get(0).get(i)).unwrap())
            .collect();
        assert_eq!(
            got,
            vec![
                vec![true, false, false],
                vec![false, true, false],
                vec![false, true, true]
            ]
        );
        let got: Vec<Vec<bool>> = (0..3)
            .map(|i| Vec::<bool>::try_from(mask.get(1).get(0).get(i)).unwrap())
            .collect();
        assert_eq!(
            got,
            vec![
                vec![true, false, false],
                vec![true, true, false],
                vec![true, true, true]
            ]
        );
        // A decode step (one query at slot 3 of four keys) sees every real key; at slot 2 of a
        // longer window it sees neither the later slot nor the pad.
        let step = attention_mask(&Tensor::from_slice2(&[[0i64, 1, 1, 1]]), 3, 1);
        assert_eq!(
            Vec::<bool>::try_from(step.flatten(0, -1)).unwrap(),
            vec![false, true, true, true]
        );
        let step = attention_mask(&Tensor::from_slice2(&[[0i64, 1, 1, 1]]), 2, 1);
        assert_eq!(
            Vec::<bool>::try_from(step.flatten(0, -1)).unwrap(),
            vec![false, true, true, false]
        );
    }

    #[test]
    fn segments_see_their_own_tokens_and_the_shared_prefix() {
        // A prefix (0), two continuations of it (1, 2) and a pad (-1).
        let segments = Tensor::from_slice2(&[[0i64, 0, 1, 1, 2, -1]]);
        let seen = |mask: &Tensor| -> Vec<Vec<i64>> {
            (0..6)
                .map(|q| {
                    let row = Vec::<bool>::try_from(mask.get(0).get(0).get(q)).unwrap();
                    (0..6).filter(|&k| row[k as usize]).collect()
                })
                .collect()
        };
        // The pad sees the prefix too, and no other token sees the pad.
        let shared = seen(&segment_mask(&segments, Some(0)));
        assert_eq!(
            shared,
            vec![
                vec![0],
                vec![0, 1],
                vec![0, 1, 2],
                vec![0, 1, 2, 3],
                vec![0, 1, 4],
                vec![0, 1, 5]
            ]
        );
        // Without a shared segment (SFT packing) each segment sees only itself.
        let apart = seen(&segment_mask(&segments, None));
        assert_eq!(
            apart,
            vec![vec![0], vec![0, 1], vec![2], vec![2, 3], vec![4], vec![5]]
        );
    }

    /// Folding query-head groups into the query axis computes the same attention as PyTorch's
    /// own grouped-query path, for a prefill (causal, padded) and a single decode query.
    #[test]
    fn grouped_attention_matches_enable_gqa() {
        let _rng = crate::lock_libtorch_rng();
        tch::manual_seed(3);
        let key_mask = Tensor::from_slice2(&[[0i64, 1, 1, 1, 1], [1, 1, 1, 1, 1]]);
        for (first, t) in [(0, 5), (4, 1)] {
            let q = Tensor::randn([2, 6, t, 4], (Kind::Float, tch::Device::Cpu));
            let (k, v) = (
                Tensor::randn([2, 2, 5, 4], (Kind::Float, tch::Device::Cpu)),
                Tensor::randn([2, 2, 5, 4], (Kind::Float, tch::Device::Cpu)),
            );
            let bias = attention_bias(&attention_mask(&key_mask, first, t), Kind::Float);
            let expected = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&bias),
                0.0,
                false,
                None,
                true,
            );
            let got = attend_grouped(&q, &k, &v, Some(&bias));
            let diff = (got - expected).abs().max().double_value(&[]);
            assert!(
                diff < 1e-6,
                "query slots {first}..{}: max abs diff {diff}",
                first + t
            );
        }
    }

    #[test]
    fn positions_skip_left_padding() {
        let positions = positions_from_mask(&Tensor::from_slice2(&[[0i64, 0, 1, 1], [1, 1, 1, 1]]));
        assert_eq!(
            Vec::<i64>::try_from(positions.flatten(0, -1)).unwrap(),
            vec![0, 0, 0, 1, 0, 1, 2, 3]
        );
    }

    #[test]
    fn llama3_scaling_matches_hand_values() {
        // dim 4, theta 10000: inv_freq = [1, 0.01]; wavelengths 2π ≈ 6.28 and 628.3.
        // old_len 64, factors low 1 / high 4: low_wavelen 64, high_wavelen 16.
        // 6.28 < 16 keeps 1.0; 628.3 > 64 is divided by factor 8.
        let scaling = crate::config::RopeScaling {
            rope_type: "llama3".into(),
            factor: 8.0,
            low_freq_factor: Some(1.0),
            high_freq_factor: Some(4.0),
            original_max_position_embeddings: Some(64),
        };
        let f = rotary_inv_freq(4, 10_000.0, Some(&scaling));
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 0.01 / 8.0).abs() < 1e-15);
        // A medium wavelength is smoothed: old_len 256 puts 628.3 between 64 and 256.
        let scaling = crate::config::RopeScaling {
            original_max_position_embeddings: Some(1024),
            ..scaling
        };
        let f = rotary_inv_freq(4, 10_000.0, Some(&scaling));
        let wavelen = 2.0 * std::f64::consts::PI / 0.01;
        let smooth = (1024.0 / wavelen - 1.0) / 3.0;
        assert!((f[1] - ((1.0 - smooth) * 0.01 / 8.0 + smooth * 0.01)).abs() < 1e-15);
    }

    #[test]
    fn rotary_rotates_pairs_by_position_angle() {
        // One head, dim 2: (x0, x1) at position p rotates by p·inv_freq = p radians.
        let inv_freq = Tensor::from_slice(&[1.0f32]);
        let (cos, signed_sin) =
            rotary_cos_sin(&inv_freq, &Tensor::from_slice2(&[[2i64]]), Kind::Float);
        let x = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 1, 1, 2]);
        let y = Vec::<f32>::try_from(apply_rotary(&x, &cos, &signed_sin).flatten(0, -1)).unwrap();
        assert!(
            (y[0] - 2f32.cos()).abs() < 1e-6 && (y[1] - 2f32.sin()).abs() < 1e-6,
            "{y:?}"
        );
    }

    #[test]
    fn partial_rotary_pairs_each_channel_with_the_one_half_the_rotary_width_away() {
        // Head dim 6, rotary over the first 4 at position 1 with inv_freq [1, 0.5]: the
        // "rotate half" layout pairs channels (0, 2) at 1 radian and (1, 3) at 0.5 (interleaved
        // rotation would pair (0, 1) and (2, 3)); channels 4 and 5 pass through.
        let inv_freq = Tensor::from_slice(&[1.0f32, 0.5]);
        let (cos, signed_sin) =
            rotary_cos_sin(&inv_freq, &Tensor::from_slice2(&[[1i64]]), Kind::Float);
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).view([1, 1, 1, 6]);
        let y = Vec::<f32>::try_from(apply_rotary(&x, &cos, &signed_sin).flatten(0, -1)).unwrap();
        let (c1, s1, c5, s5) = (1f32.cos(), 1f32.sin(), 0.5f32.cos(), 0.5f32.sin());
        let expected = [
            c1 - 3.0 * s1,
            2.0 * c5 - 4.0 * s5,
            3.0 * c1 + s1,
            4.0 * c5 + 2.0 * s5,
            5.0,
            6.0,
        ];
        for (i, (a, b)) in y.iter().zip(expected).enumerate() {
            assert!((a - b).abs() < 1e-6, "channel {i}: {a} vs {b} ({y:?})");
        }
    }

    /// transformers' rotary embedding: `x·cos + rotate_half(x)·sin` over the first
    /// `rotary_dim` channels, every product rounded to `x`'s precision.
    fn transformers_rotary(x: &Tensor, inv_freq: &Tensor, positions: &Tensor) -> Tensor {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        let (cos, sin) = (emb.cos().to_kind(x.kind()), emb.sin().to_kind(x.kind()));
        let rotary_dim = 2 * inv_freq.size()[0];
        let head_dim = x.size()[3];
        let half = rotary_dim / 2;
        let rot = x.narrow(-1, 0, rotary_dim);
        let rotated = Tensor::cat(&[-rot.narrow(-1, half, half), rot.narrow(-1, 0, half)], -1);
        let out = &rot * &cos + rotated * &sin;
        Tensor::cat(&[out, x.narrow(-1, rotary_dim, head_dim - rotary_dim)], -1)
    }

    #[test]
    fn rotary_equals_transformers_rotate_half_bit_for_bit_in_either_layout() {
        tch::manual_seed(3);
        let positions = Tensor::from_slice2(&[[0i64, 1, 2, 7, 300], [5, 6, 9, 11, 4095]]);
        for (kind, head_dim, rotary_dim) in [
            (Kind::BFloat16, 8, 8),
            (Kind::BFloat16, 12, 4),
            (Kind::Float, 8, 8),
        ] {
            let inv_freq = rotary_inv_freq(rotary_dim, 10_000.0, None);
            let inv_freq = Tensor::from_slice(&inv_freq).to_kind(Kind::Float);
            let x =
                Tensor::randn([2, 3, 5, head_dim], (Kind::Float, tch::Device::Cpu)).to_kind(kind);
            let (cos, signed_sin) = rotary_cos_sin(&inv_freq, &positions, kind);
            let got = apply_rotary(&x, &cos, &signed_sin);
            let want = transformers_rotary(&x, &inv_freq, &positions);
            // The same values with positions ahead of heads (Llama's layout), the tables'
            // axes swapped to match.
            let positions_first = apply_rotary(
                &x.transpose(1, 2).contiguous(),
                &cos.transpose(1, 2),
                &signed_sin.transpose(1, 2),
            );
            assert!(
                positions_first.transpose(1, 2).equal(&want),
                "{kind:?}, positions first"
            );
            assert!(
                got.equal(&want),
                "{kind:?}, head {head_dim}, rotary {rotary_dim}: max difference {}",
                (got.to_kind(Kind::Float) - want.to_kind(Kind::Float))
                    .abs()
                    .max()
                    .double_value(&[])
            );
        }
    }

    #[test]
    fn rms_norm_equals_transformers_formula_bit_for_bit_on_cpu() {
        // transformers' LlamaRMSNorm, operation by operation.
        let eps = 1e-5;
        tch::manual_seed(4);
        for kind in [Kind::BFloat16, Kind::Float] {
            let x =
                (Tensor::randn([3, 4, 64], (Kind::Float, tch::Device::Cpu)) * 7.0).to_kind(kind);
            let weight = (Tensor::rand([64], (Kind::Float, tch::Device::Cpu)) + 0.5).to_kind(kind);
            let xf = x.to_kind(Kind::Float);
            let variance = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
            let want = &weight * (xf * (variance + eps).rsqrt()).to_kind(kind);
            let got = rms_norm(&x, &weight, eps);
            assert_eq!(got.kind(), kind);
            assert!(got.equal(&want), "{kind:?}");
        }
    }
}
