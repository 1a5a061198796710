//! The naive forward pass: one sequence, all of its tokens at once, no KV
//! cache, no paging, no fusion — attention as softmax(QKᵀ/√d + causal mask)·V
//! over explicitly repeated KV heads, rotary embeddings by rotate_half, all
//! in candle-core ops in f32. Written apart from `llama` + `backend` so that
//! the batched, paged, chunked path is checked against an independent
//! statement of the same math.

use candle_core::{DType, Device, Tensor, D};
use servetwin_sim::model::ModelConfig;

use crate::weights::HostWeights;
use crate::{rope, Result};

fn t(w: &HostWeights, name: &str) -> Result<Tensor> {
    let x = w.get(name);
    Ok(Tensor::from_slice(&x.data, x.shape.as_slice(), &Device::Cpu)?)
}

fn rms(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?)
}

/// [heads, len, d] rotated by position: x·cos + rotate_half(x)·sin.
fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let (a, b) = (x.narrow(D::Minus1, 0, d / 2)?, x.narrow(D::Minus1, d / 2, d / 2)?);
    let rotated = Tensor::cat(&[&b.neg()?, &a], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Logits at every position of `tokens`, [len, vocab].
pub fn forward(m: &ModelConfig, w: &HostWeights, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
    let dev = Device::Cpu;
    let len = tokens.len();
    let (nq, nkv, hd) = (m.num_attention_heads as usize, m.num_key_value_heads as usize, m.head_dim as usize);
    let eps = m.rms_norm_eps;
    let freq = rope::inv_freq(m.head_dim, m.rope_theta, m.rope_scaling.as_ref());
    let freq = &freq;
    let angles: Vec<f32> = (0..len).flat_map(|p| (0..hd).map(move |i| (p as f64 * freq[i % (hd / 2)]) as f32)).collect();
    let angles = Tensor::from_vec(angles, (1, len, hd), &dev)?;
    let (cos, sin) = (angles.cos()?, angles.sin()?);
    let mask: Vec<f32> = (0..len).flat_map(|i| (0..len).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
    let mask = Tensor::from_vec(mask, (1, len, len), &dev)?;
    let ids = Tensor::from_slice(tokens, len, &dev)?;
    let mut x = t(w, "model.embed_tokens.weight")?.index_select(&ids, 0)?;
    let heads = |y: Tensor, n: usize| -> Result<Tensor> { Ok(y.reshape((len, n, hd))?.transpose(0, 1)?.contiguous()?) };
    for l in 0..m.num_layers {
        let p = format!("model.layers.{l}");
        let lin = |x: &Tensor, name: &str| -> Result<Tensor> { Ok(x.matmul(&t(w, &format!("{p}.{name}.weight"))?.t()?)?) };
        let h = rms(&x, &t(w, &format!("{p}.input_layernorm.weight"))?, eps)?;
        let q = rotary(&heads(lin(&h, "self_attn.q_proj")?, nq)?, &cos, &sin)?;
        let k = rotary(&heads(lin(&h, "self_attn.k_proj")?, nkv)?, &cos, &sin)?;
        let v = heads(lin(&h, "self_attn.v_proj")?, nkv)?;
        // Repeat each KV head for the query heads of its group.
        let group: Vec<u32> = (0..nq).map(|i| (i / (nq / nkv)) as u32).collect();
        let group = Tensor::from_vec(group, nq, &dev)?;
        let (k, v) = (k.index_select(&group, 0)?, v.index_select(&group, 0)?);
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(&mask)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let e = scores.broadcast_sub(&max)?.exp()?;
        let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let attn = probs.matmul(&v)?.transpose(0, 1)?.reshape((len, nq * hd))?;
        x = (x + lin(&attn, "self_attn.o_proj")?)?;
        let h = rms(&x, &t(w, &format!("{p}.post_attention_layernorm.weight"))?, eps)?;
        let mlp = (lin(&h, "mlp.gate_proj")?.silu()? * lin(&h, "mlp.up_proj")?)?;
        x = (x + lin(&mlp, "mlp.down_proj")?)?;
    }
    let x = rms(&x, &t(w, "model.norm.weight")?, eps)?;
    let head = if m.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
    Ok(x.matmul(&t(w, head)?.t()?)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}
