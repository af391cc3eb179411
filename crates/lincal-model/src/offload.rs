//! A frozen model's weights waiting in host memory while the model idles, so that the parts of
//! an RL step that do not run it (generation, answer extraction, scoring) have its device
//! memory for larger batches.
//!
//! The host copy is made once, in pinned memory: offloading then only points the weights at
//! it (no copy, since frozen weights never change) and reloading is one host-to-device copy
//! at the bus's speed (~45 GiB/s on an H100: 0.3 s for a 7B in bf16, SPEED.md 21).

use crate::error::{ModelError, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

/// Bytes of one pinned host allocation. libtorch's pinned-memory allocator rounds every
/// request up to a power of two, so the weights are packed into chunks of this size rather
/// than allocated one by one (which would lose up to half of each to the rounding).
const CHUNK_BYTES: i64 = 1 << 30;
/// Each weight's place in a chunk starts at a multiple of this, as libtorch's allocations do.
const ALIGNMENT: i64 = 64;

/// Every weight of a model with its copy in host memory.
pub(crate) struct HostCopy {
    /// (the model's variable, its host copy).
    weights: Vec<(Tensor, Tensor)>,
    offloaded: AtomicBool,
}

impl HostCopy {
    /// Copies `weights`, which live on `device`, into host memory (pinned when `device` is
    /// a GPU, so that copies back run at the bus's speed).
    pub(crate) fn new(weights: Vec<Tensor>, device: Device) -> Result<Self> {
        let bytes = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        let sizes: Vec<i64> = weights.iter().map(bytes).collect();
        let (places, chunk_sizes) = pack(&sizes, CHUNK_BYTES);
        let chunks = chunk_sizes
            .iter()
            .map(|&size| {
                let chunk = Tensor::f_empty([size], (Kind::Uint8, Device::Cpu))?;
                Ok(if device.is_cuda() {
                    chunk.f_pin_memory(device)?
                } else {
                    chunk
                })
            })
            .collect::<Result<Vec<Tensor>, tch::TchError>>()
            .map_err(|e| {
                ModelError::Invalid(format!(
                    "keeping a host copy of the weights ({:.1} GiB): {e}",
                    chunk_sizes.iter().sum::<i64>() as f64 / (1u64 << 30) as f64
                ))
            })?;
        let weights = tch::no_grad(|| {
            weights
                .into_iter()
                .zip(places)
                .map(|(weight, (chunk, offset))| {
                    let host = chunks[chunk]
                        .narrow(0, offset, bytes(&weight))
                        .view_dtype(weight.kind())
                        .view(weight.size().as_slice());
                    host.shallow_clone().copy_(&weight);
                    (weight, host)
                })
                .collect()
        });
        Ok(HostCopy {
            weights,
            offloaded: AtomicBool::new(false),
        })
    }

    pub(crate) fn is_offloaded(&self) -> bool {
        self.offloaded.load(Ordering::Relaxed)
    }

    /// Points every weight at its host copy; their device memory is free then. Returns
    /// whether anything moved.
    pub(crate) fn offload(&self) -> bool {
        if self.offloaded.swap(true, Ordering::Relaxed) {
            return false;
        }
        for (weight, host) in &self.weights {
            weight.shallow_clone().set_data(host);
        }
        true
    }

    /// Copies every weight back to `device` (into new memory even on the CPU, so that the
    /// host copy stays the copy). Returns whether anything moved.
    pub(crate) fn reload(&self, device: Device) -> bool {
        if !self.offloaded.swap(false, Ordering::Relaxed) {
            return false;
        }
        tch::no_grad(|| {
            for (weight, host) in &self.weights {
                // Non-blocking from pinned memory: the copies queue on the current stream,
                // before any kernel that reads the weights.
                let on_device = host.to_device_(device, host.kind(), true, true);
                weight.shallow_clone().set_data(&on_device);
            }
        });
        true
    }
}

/// Places for weights of `sizes` bytes in chunks of `chunk_bytes` (a larger weight gets a
/// chunk of its own), first fit in order: each weight's (chunk, byte offset), and the bytes of
/// each chunk.
fn pack(sizes: &[i64], chunk_bytes: i64) -> (Vec<(usize, i64)>, Vec<i64>) {
    let mut places = Vec::with_capacity(sizes.len());
    let mut chunk_sizes: Vec<i64> = Vec::new();
    for &size in sizes {
        let fits = chunk_sizes
            .last()
            .is_some_and(|&used| used + size <= chunk_bytes);
        if !fits {
            chunk_sizes.push(0);
        }
        let chunk = chunk_sizes.len() - 1;
        let used = chunk_sizes[chunk];
        places.push((chunk, used));
        chunk_sizes[chunk] = (used + size + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
    }
    (places, chunk_sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-placed: 64-byte alignment, a new chunk when the next weight does not fit, a
    /// weight larger than a chunk alone in its own.
    #[test]
    fn weights_are_packed_first_fit_in_aligned_places() {
        let (places, chunks) = pack(&[40, 80, 100, 300, 8], 256);
        // 40 at 0 (next at 64), 80 at 64 (next at 192), 100 does not fit 192 + 100 > 256:
        // chunk 1 at 0 (next at 128), 300 alone in chunk 2, 8 after it does not fit: chunk 3.
        assert_eq!(places, [(0, 0), (0, 64), (1, 0), (2, 0), (3, 0)]);
        assert_eq!(chunks, [192, 128, 320, 64]);
    }

    /// Offloaded weights read their host copy's values; reloaded ones are new memory with the
    /// same values, and offloading or reloading twice does nothing.
    #[test]
    fn offloading_and_reloading_keeps_every_value() {
        let weights = [
            Tensor::randn([3, 5], (Kind::Float, Device::Cpu)),
            Tensor::randn([7], (Kind::BFloat16, Device::Cpu)),
            Tensor::randn([2, 2, 2], (Kind::Float, Device::Cpu)),
        ];
        let values: Vec<Tensor> = weights.iter().map(Tensor::copy).collect();
        let copy = HostCopy::new(
            weights.iter().map(Tensor::shallow_clone).collect(),
            Device::Cpu,
        )
        .unwrap();
        assert!(
            !copy.reload(Device::Cpu),
            "nothing to reload before offloading"
        );
        assert!(copy.offload());
        assert!(!copy.offload());
        for ((weight, value), (_, host)) in weights.iter().zip(&values).zip(&copy.weights) {
            assert_eq!(weight.data_ptr(), host.data_ptr());
            assert!(weight.equal(value));
        }
        assert!(copy.reload(Device::Cpu));
        assert!(!copy.is_offloaded());
        for ((weight, value), (_, host)) in weights.iter().zip(&values).zip(&copy.weights) {
            assert_ne!(weight.data_ptr(), host.data_ptr());
            assert!(weight.equal(value) && host.equal(value));
            assert_eq!(weight.kind(), value.kind());
        }
    }
}
