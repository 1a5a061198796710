//! Safetensors checkpoints: a model directory written here round-trips
//! (values rounded to bf16, as written), sharded files are read together,
//! and a missing tensor, a wrong shape or a config.json for another model
//! is refused with the file and what was expected.

use half::bf16;
use servetwin_engine::weights::HostWeights;
use servetwin_engine::EngineError;
use servetwin_sim::model::{ModelConfig, ModelSpec};

fn model(layers: u32) -> ModelConfig {
    ModelConfig::resolve(&ModelSpec {
        name: "custom".into(),
        num_layers: Some(layers),
        hidden_size: Some(32),
        intermediate_size: Some(48),
        num_attention_heads: Some(4),
        num_key_value_heads: Some(2),
        vocab_size: Some(50),
        max_position_embeddings: Some(64),
        tie_word_embeddings: Some(false),
        ..Default::default()
    })
    .unwrap()
}

fn rounded(w: &HostWeights) -> HostWeights {
    let mut w = w.clone();
    for t in w.tensors.values_mut() {
        t.data.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32());
    }
    w
}

fn msg(e: EngineError) -> String {
    assert!(e.is_bad_input());
    e.to_string()
}

#[test]
fn round_trip_one_file_and_shards() {
    let m = model(2);
    let w = HostWeights::dummy(&m, 1, 0.02);
    let dir = tempfile::tempdir().unwrap();
    w.save_safetensors(&dir.path().join("model.safetensors")).unwrap();
    assert_eq!(HostWeights::load_safetensors(dir.path(), &m).unwrap(), rounded(&w));

    // The same tensors split over two files.
    let shards = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (HostWeights::default(), HostWeights::default());
    for (i, (k, v)) in w.tensors.iter().enumerate() {
        if i % 2 == 0 { &mut a } else { &mut b }.tensors.insert(k.clone(), v.clone());
    }
    a.save_safetensors(&shards.path().join("model-00001-of-00002.safetensors")).unwrap();
    b.save_safetensors(&shards.path().join("model-00002-of-00002.safetensors")).unwrap();
    assert_eq!(HostWeights::load_safetensors(shards.path(), &m).unwrap(), rounded(&w));
}

#[test]
fn missing_tensor_wrong_shape_and_foreign_config_are_refused() {
    let m = model(2);
    let dir = tempfile::tempdir().unwrap();
    let mut w = HostWeights::dummy(&m, 1, 0.02);
    w.tensors.remove("model.layers.1.self_attn.o_proj.weight");
    w.save_safetensors(&dir.path().join("model.safetensors")).unwrap();
    let e = msg(HostWeights::load_safetensors(dir.path(), &m).unwrap_err());
    assert!(e.contains("model.layers.1.self_attn.o_proj.weight is missing"), "{e}");

    // A 3-layer model's loader meets this 2-layer file: layer 2 is missing.
    let e = msg(HostWeights::load_safetensors(dir.path(), &model(3)).unwrap_err());
    assert!(e.contains("missing"), "{e}");

    let wide = ModelConfig { intermediate_size: 64, ..m.clone() };
    HostWeights::dummy(&m, 1, 0.02).save_safetensors(&dir.path().join("model.safetensors")).unwrap();
    let e = msg(HostWeights::load_safetensors(dir.path(), &wide).unwrap_err());
    assert!(e.contains("expected shape [32, 64]") && e.contains("found [32, 48]"), "{e}");

    std::fs::write(dir.path().join("config.json"), r#"{"hidden_size": 32, "num_hidden_layers": 5}"#).unwrap();
    let e = msg(HostWeights::load_safetensors(dir.path(), &m).unwrap_err());
    assert!(e.contains("config.json") && e.contains("num_hidden_layers is 5"), "{e}");

    let empty = tempfile::tempdir().unwrap();
    let e = msg(HostWeights::load_safetensors(empty.path(), &m).unwrap_err());
    assert!(e.contains("no *.safetensors"), "{e}");
}
