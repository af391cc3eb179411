//! The real SmolLM2-135M-Instruct, converted from the pinned GGUF (slow: `cargo xtask test`
//! sets LINCAL_SMOLLM2_GGUF and runs the ignored tests).

use lincal_gguf::{OutputDtype, convert_to_hf};
use lincal_model::generate::{SamplingParams, generate_text};
use lincal_model::{CausalLm, ChatTurn, Tokenizer};
use tch::{Device, Kind};

#[test]
#[ignore = "needs the SmolLM2 GGUF (cargo xtask test sets LINCAL_SMOLLM2_GGUF)"]
fn smollm2_answers_the_capital_of_france() {
    let gguf = std::env::var("LINCAL_SMOLLM2_GGUF")
        .expect("set LINCAL_SMOLLM2_GGUF to the SmolLM2-135M-Instruct GGUF");
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("smollm2");
    convert_to_hf(std::path::Path::new(&gguf), &model_dir, OutputDtype::F32).unwrap();
    let model = CausalLm::load(&model_dir, Device::Cpu, Some(Kind::Float)).unwrap();
    let tokenizer = Tokenizer::from_dir(&model_dir).unwrap();
    tokenizer
        .check_model_vocab(model.config().vocab_size())
        .unwrap();
    let prompt = tokenizer
        .apply_chat_template(
            &[ChatTurn::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    let ids = tokenizer.encode(&prompt, false).unwrap();
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 32,
        ..Default::default()
    };
    let answer = generate_text(
        &model,
        &tokenizer,
        &[ids.clone(), ids],
        &[0, 1],
        &params,
        None,
    )
    .unwrap();
    assert!(answer[0].text.contains("Paris"), "{:?}", answer[0].text);
    assert_eq!(
        answer[0].text, answer[1].text,
        "identical rows of a batch decode identically"
    );
    assert_eq!(
        answer[0].finish_reason,
        lincal_model::FinishReason::Eos,
        "the chat model ends its turn"
    );
}
