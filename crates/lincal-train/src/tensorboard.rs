//! TensorBoard event files (`events.out.tfevents.*`): TFRecord framing (length, masked
//! CRC-32C of the length, payload, masked CRC-32C of the payload) around `tensorflow.Event`
//! protobufs holding scalar summaries. The few protobuf fields needed are encoded here:
//! Event { wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5,
//! session_log = 7 }, Summary { value = 1 }, Summary.Value { tag = 1, simple_value = 2 (float) },
//! SessionLog { status = 1 (START = 1) }.

use crate::error::{Result, TrainError};
use std::io::Write;
use std::path::{Path, PathBuf};

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// TFRecord's masked CRC-32C, which keeps a CRC of data holding CRCs from looking like one.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = CASTAGNOLI.checksum(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field key: number and wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, u64::from(field << 3 | u32::from(wire)));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// What an event carries besides its time and step.
enum Payload<'a> {
    FileVersion,
    Scalars(&'a [(&'a str, f64)]),
    /// Tells TensorBoard that the run restarted at this step, so that it discards the events
    /// of the abandoned attempt from this step on.
    SessionStart,
}

fn encode_event(wall_time: f64, step: u64, payload: Payload) -> Vec<u8> {
    let mut event = Vec::new();
    put_key(&mut event, 1, 1);
    event.extend_from_slice(&wall_time.to_le_bytes());
    put_key(&mut event, 2, 0);
    put_varint(&mut event, step);
    match payload {
        Payload::FileVersion => put_bytes(&mut event, 3, b"brain.Event:2"),
        Payload::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, value) in values {
                let mut entry = Vec::new();
                put_bytes(&mut entry, 1, tag.as_bytes());
                put_key(&mut entry, 2, 5);
                entry.extend_from_slice(&(*value as f32).to_le_bytes());
                put_bytes(&mut summary, 1, &entry);
            }
            put_bytes(&mut event, 5, &summary);
        }
        Payload::SessionStart => {
            let mut session_log = Vec::new();
            put_key(&mut session_log, 1, 0);
            put_varint(&mut session_log, 1);
            put_bytes(&mut event, 7, &session_log);
        }
    }
    event
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(payload.len() + 16);
    record.extend_from_slice(&length);
    record.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    record.extend_from_slice(payload);
    record.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
    record
}

/// Appends events to one new event file; every record is flushed as written, so TensorBoard
/// sees progress live and a crash loses at most the record being written.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<seconds>.<host>.<pid>.<n>` and writes the version record.
    pub fn create(dir: &Path) -> Result<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let stem = format!(
            "events.out.tfevents.{}.{host}.{}",
            now() as u64,
            std::process::id()
        );
        // A numbered suffix keeps two writers started in the same second apart.
        let mut index = 0;
        let (file, path) = loop {
            let path = dir.join(format!("{stem}.{index}"));
            match std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
            {
                Ok(file) => break (file, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => index += 1,
                Err(e) => return Err(TrainError::io(&path, e)),
            }
        };
        let mut writer = EventWriter { file, path };
        writer.write(&encode_event(now(), 0, Payload::FileVersion))?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event with a scalar per `(tag, value)` at `step`.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        self.write(&encode_event(now(), step, Payload::Scalars(values)))
    }

    /// Marks a resumed run: TensorBoard drops older events at or after `step`.
    pub fn session_start(&mut self, step: u64) -> Result<()> {
        self.write(&encode_event(now(), step, Payload::SessionStart))
    }

    fn write(&mut self, event: &[u8]) -> Result<()> {
        self.file
            .write_all(&frame(event))
            .and_then(|()| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An event as read back: step and scalar values, or a session-start marker.
    #[derive(Debug, PartialEq)]
    pub(crate) struct ReadEvent {
        pub step: u64,
        pub file_version: Option<String>,
        pub scalars: Vec<(String, f32)>,
        pub session_start: bool,
    }

    fn varint(data: &[u8], pos: &mut usize) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = data[*pos];
            *pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
        }
        value
    }

    /// Fields of one message as (number, wire type, raw bytes or varint value).
    fn fields(data: &[u8]) -> Vec<(u32, u8, Vec<u8>, u64)> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < data.len() {
            let key = varint(data, &mut pos);
            let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
            match wire {
                0 => out.push((field, wire, Vec::new(), varint(data, &mut pos))),
                1 => {
                    out.push((field, wire, data[pos..pos + 8].to_vec(), 0));
                    pos += 8;
                }
                2 => {
                    let len = varint(data, &mut pos) as usize;
                    out.push((field, wire, data[pos..pos + len].to_vec(), 0));
                    pos += len;
                }
                5 => {
                    out.push((field, wire, data[pos..pos + 4].to_vec(), 0));
                    pos += 4;
                }
                other => panic!("unexpected wire type {other}"),
            }
        }
        out
    }

    /// Parses an event file, checking both CRCs of every record as TensorBoard does.
    pub(crate) fn read_events(path: &Path) -> std::result::Result<Vec<ReadEvent>, String> {
        let data = std::fs::read(path).map_err(|e| e.to_string())?;
        let mut pos = 0;
        let mut events = Vec::new();
        while pos < data.len() {
            let length_bytes = &data[pos..pos + 8];
            let length = u64::from_le_bytes(length_bytes.try_into().unwrap()) as usize;
            if u32::from_le_bytes(data[pos + 8..pos + 12].try_into().unwrap())
                != masked_crc32c(length_bytes)
            {
                return Err(format!("bad length CRC at byte {pos}"));
            }
            let payload = &data[pos + 12..pos + 12 + length];
            if u32::from_le_bytes(
                data[pos + 12 + length..pos + 16 + length]
                    .try_into()
                    .unwrap(),
            ) != masked_crc32c(payload)
            {
                return Err(format!("bad payload CRC at byte {pos}"));
            }
            pos += 16 + length;
            let mut event = ReadEvent {
                step: 0,
                file_version: None,
                scalars: Vec::new(),
                session_start: false,
            };
            for (field, _, bytes, value) in fields(payload) {
                match field {
                    2 => event.step = value,
                    3 => event.file_version = Some(String::from_utf8(bytes).unwrap()),
                    5 => {
                        for (_, _, entry, _) in fields(&bytes) {
                            let parts = fields(&entry);
                            let tag = String::from_utf8(
                                parts.iter().find(|p| p.0 == 1).unwrap().2.clone(),
                            )
                            .unwrap();
                            let value = f32::from_le_bytes(
                                parts
                                    .iter()
                                    .find(|p| p.0 == 2)
                                    .unwrap()
                                    .2
                                    .clone()
                                    .try_into()
                                    .unwrap(),
                            );
                            event.scalars.push((tag, value));
                        }
                    }
                    7 => event.session_start = fields(&bytes).iter().any(|f| f.0 == 1 && f.3 == 1),
                    _ => {}
                }
            }
            events.push(event);
        }
        Ok(events)
    }

    #[test]
    fn masked_crc_matches_known_values() {
        // CRC-32C("123456789") = 0xE3069283, the check value of the Castagnoli polynomial.
        assert_eq!(CASTAGNOLI.checksum(b"123456789"), 0xE306_9283);
        assert_eq!(
            masked_crc32c(b"123456789"),
            0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
        // The empty string has CRC 0, so its mask is the constant alone.
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
    }

    #[test]
    fn event_file_parses_back_with_valid_crcs() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        writer
            .scalars(1, &[("train/loss", 2.5), ("train/learning_rate", 1e-5)])
            .unwrap();
        writer.session_start(2).unwrap();
        writer.scalars(300, &[("eval/loss", 0.125)]).unwrap();
        let path = writer.path().to_path_buf();
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("events.out.tfevents.")
        );
        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(events[1].step, 1);
        assert_eq!(
            events[1].scalars,
            vec![
                ("train/loss".to_string(), 2.5),
                ("train/learning_rate".to_string(), 1e-5f32)
            ]
        );
        assert!(events[2].session_start && events[2].step == 2);
        assert_eq!(
            (events[3].step, events[3].scalars.clone()),
            (300, vec![("eval/loss".to_string(), 0.125)])
        );
        // A flipped payload byte fails the payload CRC.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(
            read_events(&path)
                .unwrap_err()
                .starts_with("bad payload CRC")
        );
    }
}
