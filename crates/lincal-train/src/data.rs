//! Examples, their tokenisation (SPEC 1.3, 1.6), batching and the seeded epoch order.

use crate::error::{Result, TrainError};
use lincal_model::Tokenizer;
use lincal_model::layers::{attention_mask, positions_from_mask, segment_mask};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

/// Label of a position that carries no loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// The examples are `lincal-data`'s, which reads them from every supported format: an SFT
/// pair is a formatted prompt and the target appended to it with no separator; a
/// reward-model example is a formatted text (`prompt`) and its label in [0, 1].
pub use lincal_data::schema::{RewardExample, SftExample};

/// Token ids of one training row with their labels; with packing, several examples.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub input_ids: Vec<i64>,
    /// `IGNORE_INDEX` on prompt tokens; the token id itself on target tokens and EOS.
    pub labels: Vec<i64>,
    /// Offsets at which the packed examples start (`[0]` for a single example).
    pub starts: Vec<usize>,
}

impl TokenRow {
    pub fn target_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Tokenises prompt + target + EOS as the reference: the whole string is encoded with the
/// tokenizer's special tokens (BOS for Llama), the first `len(encode(prompt))` positions are
/// masked, and the sequence is truncated to `max_len` (which may cut the EOS).
pub fn tokenize_sft(
    tokenizer: &Tokenizer,
    example: &SftExample,
    eos_id: i64,
    max_len: usize,
) -> Result<TokenRow> {
    let prompt_len = tokenizer.encode(&example.prompt, true)?.len();
    let mut input_ids = tokenizer.encode(&format!("{}{}", example.prompt, example.target), true)?;
    input_ids.push(eos_id);
    input_ids.truncate(max_len);
    let labels = input_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| if i < prompt_len { IGNORE_INDEX } else { id })
        .collect();
    Ok(TokenRow {
        input_ids,
        labels,
        starts: vec![0],
    })
}

/// Tokenises `examples`, dropping those left without a target token by truncation (they
/// would carry no loss). Returns the rows and the indices of the dropped examples.
pub fn tokenize_sft_set(
    tokenizer: &Tokenizer,
    examples: &[SftExample],
    eos_id: i64,
    max_len: usize,
    set: &'static str,
) -> Result<(Vec<TokenRow>, Vec<usize>)> {
    let mut rows = Vec::with_capacity(examples.len());
    let mut dropped = Vec::new();
    for (index, example) in examples.iter().enumerate() {
        let row =
            tokenize_sft(tokenizer, example, eos_id, max_len).map_err(|e| TrainError::Data {
                set,
                index,
                message: e.to_string(),
            })?;
        if row.target_tokens() == 0 {
            dropped.push(index);
        } else {
            rows.push(row);
        }
    }
    Ok((rows, dropped))
}

/// Concatenates rows greedily, in order, into rows of at most `max_len` tokens.
pub fn pack_rows(rows: &[TokenRow], max_len: usize) -> Vec<TokenRow> {
    let mut packed: Vec<TokenRow> = Vec::new();
    for row in rows {
        match packed.last_mut() {
            Some(last) if last.input_ids.len() + row.input_ids.len() <= max_len => {
                last.starts.push(last.input_ids.len());
                last.input_ids.extend_from_slice(&row.input_ids);
                last.labels.extend_from_slice(&row.labels);
            }
            _ => packed.push(row.clone()),
        }
    }
    packed
}

/// Appends `values` and then `pad` copies of `fill` (a right-padded row of a batch).
fn extend_padded(out: &mut Vec<i64>, values: &[i64], fill: i64, pad: usize) {
    out.extend_from_slice(values);
    out.extend(std::iter::repeat_n(fill, pad));
}

/// A right-padded SFT batch on a device.
pub struct SftBatch {
    pub input_ids: Tensor,
    pub labels: Tensor,
    pub positions: Tensor,
    /// `None` (plain causal attention, right padding is invisible to real tokens) unless rows
    /// are packed, in which case each example attends only to itself.
    pub mask: Option<Tensor>,
    /// Real (non-pad) tokens.
    pub tokens: usize,
}

pub fn collate_sft(rows: &[&TokenRow], pad_id: i64, device: Device) -> SftBatch {
    let width = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut labels = Vec::with_capacity(rows.len() * width);
    let mut positions = Vec::with_capacity(rows.len() * width);
    // Per token, the index of its packed example (pads: one past the last).
    let mut segments = Vec::with_capacity(rows.len() * width);
    for row in rows {
        let pad = width - row.input_ids.len();
        extend_padded(&mut ids, &row.input_ids, pad_id, pad);
        extend_padded(&mut labels, &row.labels, IGNORE_INDEX, pad);
        for (segment, &start) in row.starts.iter().enumerate() {
            let end = row
                .starts
                .get(segment + 1)
                .copied()
                .unwrap_or(row.input_ids.len());
            positions.extend((0..(end - start) as i64).collect::<Vec<_>>());
            segments.extend(std::iter::repeat_n(segment as i64, end - start));
        }
        positions.extend(std::iter::repeat_n(0, pad));
        segments.extend(std::iter::repeat_n(row.starts.len() as i64, pad));
    }
    let shape = [rows.len() as i64, width as i64];
    let packed = rows.iter().any(|r| r.starts.len() > 1);
    let mask = packed.then(|| {
        segment_mask(
            &Tensor::from_slice(&segments).view(shape).to_device(device),
            None,
        )
    });
    SftBatch {
        input_ids: Tensor::from_slice(&ids).view(shape).to_device(device),
        labels: Tensor::from_slice(&labels).view(shape).to_device(device),
        positions: Tensor::from_slice(&positions).view(shape).to_device(device),
        mask,
        tokens: rows.iter().map(|r| r.input_ids.len()).sum(),
    }
}

/// Tokenises a reward-model text: special tokens added, truncated on the right to `max_len`.
pub fn tokenize_reward(tokenizer: &Tokenizer, text: &str, max_len: usize) -> Result<Vec<i64>> {
    Ok(tokenize_reward_texts(tokenizer, &[text], max_len)?.remove(0))
}

/// [`tokenize_reward`] of many texts, encoded on the host's cores.
pub fn tokenize_reward_texts<S: AsRef<str>>(
    tokenizer: &Tokenizer,
    texts: &[S],
    max_len: usize,
) -> Result<Vec<Vec<i64>>> {
    let mut rows = tokenizer.encode_batch(texts, true)?;
    rows.iter_mut().for_each(|row| row.truncate(max_len));
    Ok(rows)
}

/// A left-padded batch: the last position of every row is its last real token.
pub struct LeftPaddedBatch {
    pub input_ids: Tensor,
    pub positions: Tensor,
    pub mask: Tensor,
    pub tokens: usize,
}

pub fn collate_left_padded(rows: &[&[i64]], pad_id: i64, device: Device) -> LeftPaddedBatch {
    let (ids, key_mask) = lincal_model::generate::left_pad(
        &rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
        pad_id,
        device,
    );
    let width = ids.size()[1];
    LeftPaddedBatch {
        positions: positions_from_mask(&key_mask),
        mask: attention_mask(&key_mask, 0, width),
        input_ids: ids,
        tokens: rows.iter().map(|r| r.len()).sum(),
    }
}

/// Token rows of texts that begin alike, packed into one row: their common tokens once
/// (segment 0), then each text's own tokens (segments 1, 2, ...) at the positions they have
/// alone. Under [`segment_mask`] with shared segment 0 every text is computed as it is alone,
/// and k ForecastProbs inputs of one paragraph, which differ only in their last few tokens,
/// cost about one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SharedPrefixRow {
    pub input_ids: Vec<i64>,
    pub positions: Vec<i64>,
    pub segments: Vec<i64>,
    /// Each text of the row: its index among the texts packed, and where its last token is.
    pub reads: Vec<(usize, usize)>,
}

/// Packs non-empty token `rows` (see [`SharedPrefixRow`]): in lexicographic order, a text
/// joins the row before it when the row's common prefix stays at least half of its longest
/// text, the row has fewer tokens than keeping the text apart, and it stays within `max_len`
/// tokens and twice its longest text; otherwise the text starts a row. (Texts that share
/// little, such as a first BOS token, stay apart: packing them would save a token and cost a
/// longer row's attention; rows stay near the lengths batch sizes are planned for.)
pub(crate) fn pack_shared_prefixes(rows: &[Vec<i64>], max_len: usize) -> Vec<SharedPrefixRow> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| rows[a].cmp(&rows[b]).then(a.cmp(&b)));
    let mut packed = Vec::new();
    // The row being filled: its texts, their common prefix, total and longest length.
    let mut members: Vec<usize> = Vec::new();
    let (mut prefix, mut total, mut longest) = (0, 0, 0);
    for i in order {
        let len = rows[i].len();
        if let Some(&first) = members.first() {
            let n = members.len();
            let shared = prefix.min(common_prefix(&rows[first], &rows[i]));
            let apart = prefix + (total - n * prefix) + len;
            let joined = shared + (total + len - (n + 1) * shared);
            let joined_longest = longest.max(len);
            if 2 * shared >= joined_longest
                && joined < apart
                && joined <= max_len.min(2 * joined_longest)
            {
                members.push(i);
                (prefix, total, longest) = (shared, total + len, joined_longest);
                continue;
            }
            packed.push(shared_prefix_row(rows, &members, prefix));
            members.clear();
        }
        members.push(i);
        (prefix, total, longest) = (len, len, len);
    }
    if !members.is_empty() {
        packed.push(shared_prefix_row(rows, &members, prefix));
    }
    packed
}

fn common_prefix(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The row of `members`, which share their first `prefix` tokens (at least one).
fn shared_prefix_row(rows: &[Vec<i64>], members: &[usize], prefix: usize) -> SharedPrefixRow {
    let mut row = SharedPrefixRow {
        input_ids: rows[members[0]][..prefix].to_vec(),
        positions: (0..prefix as i64).collect(),
        segments: vec![0; prefix],
        reads: Vec::with_capacity(members.len()),
    };
    for (segment, &m) in (1..).zip(members) {
        let own = &rows[m][prefix..];
        row.input_ids.extend_from_slice(own);
        row.positions
            .extend(prefix as i64..(prefix + own.len()) as i64);
        row.segments.extend(std::iter::repeat_n(segment, own.len()));
        // A text that is all prefix ends where the prefix does.
        let last = if own.is_empty() {
            prefix - 1
        } else {
            row.input_ids.len() - 1
        };
        row.reads.push((m, last));
    }
    row
}

/// A batch of [`SharedPrefixRow`]s, right-padded (pads form segment -1, seen by no text).
pub(crate) struct SharedPrefixBatch {
    pub input_ids: Tensor,
    pub positions: Tensor,
    pub mask: Tensor,
    /// Each text of the batch: its index among the texts packed, and where its last token is
    /// in the batch's tokens flattened to `[B · T]`.
    pub reads: Vec<(usize, i64)>,
}

pub(crate) fn collate_shared_prefixes(
    rows: &[SharedPrefixRow],
    pad_id: i64,
    device: Device,
) -> SharedPrefixBatch {
    let width = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
    let (mut ids, mut positions, mut segments, mut reads) = (vec![], vec![], vec![], vec![]);
    for (b, row) in rows.iter().enumerate() {
        let pad = width - row.input_ids.len();
        extend_padded(&mut ids, &row.input_ids, pad_id, pad);
        extend_padded(&mut positions, &row.positions, 0, pad);
        extend_padded(&mut segments, &row.segments, -1, pad);
        reads.extend(
            row.reads
                .iter()
                .map(|&(text, at)| (text, (b * width + at) as i64)),
        );
    }
    let shape = [rows.len() as i64, width as i64];
    let tensor = |values: &[i64]| Tensor::from_slice(values).view(shape).to_device(device);
    SharedPrefixBatch {
        input_ids: tensor(&ids),
        positions: tensor(&positions),
        mask: segment_mask(&tensor(&segments), Some(0)),
        reads,
    }
}

/// The order of the training units in `epoch`: a permutation drawn from its own ChaCha
/// stream of `seed`, so any epoch's order is known without replaying the ones before (an
/// exact resume needs no saved RNG state).
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng);
    order
}

/// A digest of the training rows, stored with checkpoints so that a resume on other data
/// is refused.
pub fn rows_digest<'a>(rows: impl Iterator<Item = (&'a [i64], &'a [i64])>) -> String {
    let mut hasher = Sha256::new();
    for (ids, labels) in rows {
        hasher.update((ids.len() as u64).to_le_bytes());
        for v in ids.iter().chain(labels) {
            hasher.update(v.to_le_bytes());
        }
    }
    format!("{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> (tempfile::TempDir, Tokenizer) {
        let dir = tempfile::tempdir().unwrap();
        lincal_model::testing::write_tokenizer(dir.path(), 64);
        let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
        (dir, tokenizer)
    }

    #[test]
    fn texts_that_begin_alike_share_a_row_by_hand() {
        let rows = vec![
            vec![5, 6, 7, 8],
            vec![9],
            vec![5, 6, 7, 10],
            vec![5, 6],
            vec![5, 6, 7, 8],
            vec![1, 2, 3],
        ];
        // Lexicographic order: 5 | 3, 0, 4, 2 | 1. Text 3 is all prefix (it reads the
        // prefix's last token); texts 0 and 4 repeat each other as segments of their own.
        let row = |ids: &[i64], positions: &[i64], segments: &[i64], reads: &[(usize, usize)]| {
            SharedPrefixRow {
                input_ids: ids.to_vec(),
                positions: positions.to_vec(),
                segments: segments.to_vec(),
                reads: reads.to_vec(),
            }
        };
        assert_eq!(
            pack_shared_prefixes(&rows, 64),
            vec![
                row(&[1, 2, 3], &[0, 1, 2], &[0, 0, 0], &[(5, 2)]),
                row(
                    &[5, 6, 7, 8, 7, 8, 7, 10],
                    &[0, 1, 2, 3, 2, 3, 2, 3],
                    &[0, 0, 2, 2, 3, 3, 4, 4],
                    &[(3, 1), (0, 3), (4, 5), (2, 7)]
                ),
                row(&[9], &[0], &[0], &[(1, 0)]),
            ]
        );
        // A row stops before it would pass max_len: text 2 (8 tokens joined) goes alone.
        let packed = pack_shared_prefixes(&rows, 7);
        let lengths: Vec<usize> = packed.iter().map(|r| r.input_ids.len()).collect();
        assert_eq!(lengths, [3, 6, 4, 1]);
        assert_eq!(packed[2].reads, [(2, 3)]);
        // Batched, each read points at its row's token in the flattened batch.
        let batch = collate_shared_prefixes(&packed, 0, Device::Cpu);
        assert_eq!(batch.input_ids.size(), [4, 6]);
        let flat = Vec::<i64>::try_from(batch.input_ids.flatten(0, 1)).unwrap();
        for (text, at) in batch.reads {
            assert_eq!(
                flat[at as usize],
                *rows[text].last().unwrap(),
                "text {text}"
            );
        }
        // Texts sharing less than half their length (here a first BOS-like token) stay apart,
        // and so does a text that would take the row's prefix below half its longest text.
        let little = vec![vec![1, 20, 21, 22], vec![1, 30, 31, 32]];
        assert_eq!(pack_shared_prefixes(&little, 64).len(), 2);
        let long = vec![vec![5, 6, 7, 8], vec![5, 6, 7, 9], vec![5, 6, 10, 11, 12]];
        let lengths: Vec<usize> = pack_shared_prefixes(&long, 64)
            .iter()
            .map(|r| r.input_ids.len())
            .collect();
        assert_eq!(lengths, [5, 5]);
        // A row stays within twice its longest text: three texts of 4 shared and 3 own
        // tokens fill 13 of 14, a fourth would make 16.
        let wide: Vec<Vec<i64>> = (0..4).map(|k| vec![1, 2, 3, 4, 10 + k, 20, 30]).collect();
        let lengths: Vec<usize> = pack_shared_prefixes(&wide, 64)
            .iter()
            .map(|r| r.input_ids.len())
            .collect();
        assert_eq!(lengths, [13, 7]);
    }

    #[test]
    fn labels_mask_exactly_the_prompt_and_the_padding() {
        let (_dir, tok) = tokenizer();
        // The word-level test tokenizer maps "tN" to id N; EOS "</s>" is id 2.
        let short = tokenize_sft(
            &tok,
            &SftExample {
                question_id: None,
                prompt: "t5 t6 t7".into(),
                target: " t8 t9".into(),
            },
            2,
            64,
        )
        .unwrap();
        assert_eq!(short.input_ids, vec![5, 6, 7, 8, 9, 2]);
        assert_eq!(short.labels, vec![-100, -100, -100, 8, 9, 2]);
        let long = tokenize_sft(
            &tok,
            &SftExample {
                question_id: None,
                prompt: "t10".into(),
                target: " t11 t12 t13 t14 t15".into(),
            },
            2,
            64,
        )
        .unwrap();
        assert_eq!(long.labels, vec![-100, 11, 12, 13, 14, 15, 2]);
        let batch = collate_sft(&[&short, &long], 63, Device::Cpu);
        assert_eq!(
            Vec::<i64>::try_from(batch.input_ids.get(0)).unwrap(),
            vec![5, 6, 7, 8, 9, 2, 63]
        );
        assert_eq!(
            Vec::<i64>::try_from(batch.labels.get(0)).unwrap(),
            vec![-100, -100, -100, 8, 9, 2, -100]
        );
        assert_eq!(
            Vec::<i64>::try_from(batch.labels.get(1)).unwrap(),
            vec![-100, 11, 12, 13, 14, 15, 2]
        );
        assert_eq!(batch.tokens, 13);
        assert!(batch.mask.is_none());
        // Truncation at 4 tokens keeps one target token and cuts the EOS.
        let cut = tokenize_sft(
            &tok,
            &SftExample {
                question_id: None,
                prompt: "t5 t6 t7".into(),
                target: " t8 t9".into(),
            },
            2,
            4,
        )
        .unwrap();
        assert_eq!(
            (cut.input_ids, cut.labels),
            (vec![5, 6, 7, 8], vec![-100, -100, -100, 8])
        );
        // A prompt that fills the window leaves no target: the example is dropped.
        let examples = [
            SftExample {
                question_id: None,
                prompt: "t5 t6 t7 t8".into(),
                target: " t9".into(),
            },
            SftExample {
                question_id: None,
                prompt: "t5".into(),
                target: " t9".into(),
            },
        ];
        let (rows, dropped) = tokenize_sft_set(&tok, &examples, 2, 4, "train").unwrap();
        assert_eq!((rows.len(), dropped), (1, vec![0]));
    }

    #[test]
    fn packed_rows_restart_positions_and_attend_within_each_example() {
        let a = TokenRow {
            input_ids: vec![5, 6, 2],
            labels: vec![-100, 6, 2],
            starts: vec![0],
        };
        let b = TokenRow {
            input_ids: vec![7, 2],
            labels: vec![-100, 2],
            starts: vec![0],
        };
        let c = TokenRow {
            input_ids: vec![8, 9, 10, 2],
            labels: vec![-100, 9, 10, 2],
            starts: vec![0],
        };
        let packed = pack_rows(&[a, b, c], 6);
        assert_eq!(packed.len(), 2);
        assert_eq!(
            (packed[0].input_ids.clone(), packed[0].starts.clone()),
            (vec![5, 6, 2, 7, 2], vec![0, 3])
        );
        let batch = collate_sft(&[&packed[0], &packed[1]], 63, Device::Cpu);
        assert_eq!(
            Vec::<i64>::try_from(batch.positions.get(0)).unwrap(),
            vec![0, 1, 2, 0, 1]
        );
        assert_eq!(
            Vec::<i64>::try_from(batch.positions.get(1)).unwrap(),
            vec![0, 1, 2, 3, 0]
        );
        let mask = batch.mask.unwrap();
        // Token 3 (start of the second example) sees only itself; token 4 sees tokens 3 and 4.
        assert_eq!(
            Vec::<bool>::try_from(mask.get(0).get(0).get(3)).unwrap(),
            vec![false, false, false, true, false]
        );
        assert_eq!(
            Vec::<bool>::try_from(mask.get(0).get(0).get(4)).unwrap(),
            vec![false, false, false, true, true]
        );
        // The pad of row 1 sees only itself, never real tokens.
        assert_eq!(
            Vec::<bool>::try_from(mask.get(1).get(0).get(4)).unwrap(),
            vec![false, false, false, false, true]
        );
    }

    #[test]
    fn epoch_orders_are_seeded_permutations() {
        let first = epoch_order(10, 42, 0);
        assert_eq!(first, epoch_order(10, 42, 0));
        assert_ne!(first, epoch_order(10, 42, 1));
        assert_ne!(first, epoch_order(10, 43, 0));
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn left_padding_puts_the_last_real_token_last() {
        let batch = collate_left_padded(&[&[5, 6, 7], &[8]], 63, Device::Cpu);
        assert_eq!(
            Vec::<i64>::try_from(batch.input_ids.get(1)).unwrap(),
            vec![63, 63, 8]
        );
        assert_eq!(
            Vec::<i64>::try_from(batch.positions.get(1)).unwrap(),
            vec![0, 0, 0]
        );
        assert_eq!(batch.tokens, 4);
    }
}
