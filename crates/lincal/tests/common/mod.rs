//! What the CLI tests share: running the real binary, a tiny model directory and a question
//! file. Each test binary compiles this module and uses part of it.

use lincal_model::testing::{random_model, tiny_llama, write_tokenizer};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn lincal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lincal"))
        .args(args)
        .output()
        .expect("lincal runs")
}

/// Runs `lincal` with every file it writes limited to `kib` KiB (RLIMIT_FSIZE, set by the
/// shell's `ulimit -f`), which fails writes as a full disk does. SIGXFSZ is ignored, so a write
/// past the limit returns an error (EFBIG) instead of killing the process.
#[allow(dead_code)]
pub fn lincal_with_file_size_limit(args: &[&str], kib: u64) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {kib}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_lincal"))
        .args(args)
        .output()
        .expect("bash runs")
}

/// Every path under `dir` whose name marks a temporary file or directory.
#[allow(dead_code)]
pub fn leftover_temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".tmp") || name.ends_with(".partial") || name.ends_with(".old") {
            found.push(path.clone());
        }
        if path.is_dir() {
            found.extend(leftover_temporaries(&path));
        }
    }
    found
}

/// The stderr of a `lincal` run that must fail, checked to hold `expected`.
#[allow(dead_code)]
pub fn fails(args: &[&str], expected: &str) -> String {
    let output = lincal(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success() && stderr.contains(expected),
        "lincal {args:?} should fail saying {expected:?}:\n{stderr}"
    );
    stderr
}

/// Every line of a JSONL file.
#[allow(dead_code)]
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A tiny random Llama with a 64-word tokenizer ("t3".."t63") in `dir/tiny`.
#[allow(dead_code)]
pub fn tiny_model_dir(dir: &Path) -> String {
    let model_dir = dir.join("tiny");
    std::fs::create_dir_all(&model_dir).unwrap();
    random_model(tiny_llama(true), 1)
        .save(&model_dir, usize::MAX)
        .unwrap();
    write_tokenizer(&model_dir, 64);
    model_dir.to_str().unwrap().to_string()
}

/// Forty general-knowledge questions, none of which contains its own answer (the offline
/// query writer fails such a question: its query would give the answer away).
#[allow(dead_code)]
pub const QUESTIONS: [(&str, &str); 40] = [
    ("What is the capital of France?", "Paris"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("Who wrote the play Hamlet?", "William Shakespeare"),
    ("What is the chemical symbol for gold?", "Au"),
    ("Which ocean is the largest?", "Pacific Ocean"),
    ("In which country is the city of Kyoto?", "Japan"),
    ("What is the largest mammal?", "Blue whale"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    (
        "What is the boiling point of water in degrees Celsius?",
        "100",
    ),
    (
        "Which language has the most native speakers?",
        "Mandarin Chinese",
    ),
    (
        "Who was the first President of the United States?",
        "George Washington",
    ),
    ("What is the tallest mountain on Earth?", "Mount Everest"),
    ("Which gas do plants absorb from the air?", "Carbon dioxide"),
    ("In which year did the Titanic sink?", "1912"),
    ("What is the longest river in Africa?", "Nile"),
    ("Who developed the theory of relativity?", "Albert Einstein"),
    ("What is the smallest prime number?", "2"),
    ("Which metal is liquid at room temperature?", "Mercury"),
    (
        "What is the currency of the United Kingdom?",
        "Pound sterling",
    ),
    ("Which organ pumps blood through the body?", "Heart"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"),
    ("How many continents are there?", "7"),
    ("Which element has the chemical symbol O?", "Oxygen"),
    ("Who discovered penicillin?", "Alexander Fleming"),
    ("What is the largest planet in the Solar System?", "Jupiter"),
    ("What is the hardest natural substance?", "Diamond"),
    (
        "Which country gave the Statue of Liberty to the United States?",
        "France",
    ),
    (
        "What is the freezing point of water in degrees Fahrenheit?",
        "32",
    ),
    ("Who wrote Pride and Prejudice?", "Jane Austen"),
    ("What is the capital of Australia?", "Canberra"),
    ("Which bird is a symbol of peace?", "Dove"),
    ("How many legs does a spider have?", "8"),
    ("What is the square root of 81?", "9"),
    ("Which instrument has 88 keys?", "Piano"),
    ("What is the main language spoken in Brazil?", "Portuguese"),
    ("Who composed the Moonlight Sonata?", "Ludwig van Beethoven"),
    ("What is the largest hot desert in the world?", "Sahara"),
    ("Which country has the largest population?", "India"),
    ("What is the capital of Canada?", "Ottawa"),
];

/// The first `count` of [`QUESTIONS`] as a QA JSONL file (`q0`, `q1`, ...) in `dir`.
#[allow(dead_code)]
pub fn write_questions(dir: &Path, count: usize) -> PathBuf {
    let lines: String = QUESTIONS
        .iter()
        .take(count)
        .enumerate()
        .map(|(i, (question, answer))| {
            let record = serde_json::json!({
                "id": format!("q{i}"),
                "question": question,
                "answer": answer,
                "aliases": [answer],
                "source": "test",
            });
            format!("{record}\n")
        })
        .collect();
    let path = dir.join("questions.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

/// Files in the reference dataset's layout, and TriviaQA's answers for their question ids.
#[allow(dead_code)]
pub struct ReferenceFiles {
    pub sft_training: PathBuf,
    pub reward_model_training: PathBuf,
    pub trivia_qa: PathBuf,
}

/// The reference's `sft_training.csv` and `reward_model_training.csv` for the first six
/// [`QUESTIONS`] (ids `tq0`..`tq5`; one extracted answer per paragraph, so two ForecastProbs
/// examples per question) and those questions as TriviaQA JSONL, in `dir`.
#[allow(dead_code)]
pub fn write_reference_files(dir: &Path) -> ReferenceFiles {
    let csv = |rows: Vec<Vec<String>>| -> String {
        rows.iter()
            .map(|row| {
                let cells: Vec<String> = row
                    .iter()
                    .map(|cell| format!("\"{}\"", cell.replace('"', "\"\"")))
                    .collect();
                cells.join(",") + "\n"
            })
            .collect()
    };
    let header = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let mut sft = vec![header(&lincal_data::schema::SFT_TRAINING_COLUMNS)];
    let mut reward = vec![header(&lincal_data::schema::REWARD_MODEL_TRAINING_COLUMNS)];
    let mut trivia = String::new();
    for (i, (question, answer)) in QUESTIONS.iter().take(6).enumerate() {
        let id = format!("tq{i}");
        sft.push(vec![
            id.clone(),
            format!("Write a paragraph about this: {question}"),
            format!("I am 70% sure that it is {answer}."),
            format!("['It is {answer}.', 'It is not known.']"),
            format!("It is {answer}."),
        ]);
        reward.push(vec![
            id.clone(),
            format!("I am 70% sure that it is {answer}."),
            format!("['{answer}', '{answer}']"),
            "[0.7, 0.7]".into(),
            format!("It is {answer}."),
            (i % 2).to_string(),
        ]);
        let record = serde_json::json!({
            "question": question,
            "question_id": id,
            "answer": {"aliases": [answer], "value": answer},
        });
        trivia.push_str(&format!("{record}\n"));
    }
    let files = [
        ("sft_training.csv", csv(sft)),
        ("reward_model_training.csv", csv(reward)),
        ("trivia_qa.jsonl", trivia),
    ];
    for (name, text) in &files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    ReferenceFiles {
        sft_training: dir.join("sft_training.csv"),
        reward_model_training: dir.join("reward_model_training.csv"),
        trivia_qa: dir.join("trivia_qa.jsonl"),
    }
}
