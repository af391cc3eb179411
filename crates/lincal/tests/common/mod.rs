//! What the CLI tests share: running the real binary, and a tiny model directory.

use lincal_model::testing::{random_model, tiny_llama, write_tokenizer};
use std::path::Path;
use std::process::{Command, Output};

pub fn lincal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lincal"))
        .args(args)
        .output()
        .expect("lincal runs")
}

/// A tiny random Llama with a 64-word tokenizer ("t3".."t63") in `dir/tiny`.
pub fn tiny_model_dir(dir: &Path) -> String {
    let model_dir = dir.join("tiny");
    std::fs::create_dir_all(&model_dir).unwrap();
    random_model(tiny_llama(true), 1)
        .save(&model_dir, usize::MAX)
        .unwrap();
    write_tokenizer(&model_dir, 64);
    model_dir.to_str().unwrap().to_string()
}
