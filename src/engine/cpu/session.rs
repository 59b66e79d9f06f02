//! The native engine behind the engine interface: [`CpuEncoder`] and [`CpuDecoder`] run
//! [`encode`] and a [`DecoderState`] on a model's native weights.

use super::{DecoderState, EncoderWorkspace, Weights, encode};

/// The native engine's [`Encoder`](crate::engine::Encoder): [`encode`] on a preallocated workspace.
pub struct CpuEncoder {
    model: std::sync::Arc<crate::engine::WhisperModel>,
    ws: EncoderWorkspace,
}

impl CpuEncoder {
    /// An encoder of `model`, whose weights must be the native engine's.
    pub fn new(model: std::sync::Arc<crate::engine::WhisperModel>) -> Self {
        let ws = EncoderWorkspace::new(&model.dims);
        Self { model, ws }
    }
}

/// The native weights of a model built for this engine ([`crate::engine::WhisperModel::new_encoder`]
/// and `new_decoder` only make native encoders and decoders for native weights).
fn native(model: &crate::engine::WhisperModel) -> &Weights {
    match &model.weights {
        crate::engine::ModelWeights::Cpu(w) => w,
        crate::engine::ModelWeights::Onnx(_) => {
            unreachable!("a native engine object on an ONNX model")
        }
    }
}

impl crate::engine::Encoder for CpuEncoder {
    fn encode(
        &mut self,
        mel: &[f32],
        out: &mut [f32],
        threads: usize,
    ) -> Result<(), crate::error::Error> {
        encode(native(&self.model), mel, &mut self.ws, threads);
        out.copy_from_slice(&self.ws.x[..out.len()]);
        Ok(())
    }

    fn set_live(&mut self, live: bool) {
        self.ws.int8 = !live;
    }
}

/// The native engine's [`Decoder`](crate::engine::Decoder): a [`DecoderState`] on the model's weights.
pub struct CpuDecoder {
    model: std::sync::Arc<crate::engine::WhisperModel>,
    state: DecoderState,
}

impl CpuDecoder {
    pub fn new(model: std::sync::Arc<crate::engine::WhisperModel>, max_batch: usize) -> Self {
        let w = native(&model);
        let state = DecoderState::new(&model.dims, max_batch, w.cross_kv, w.cross_tiles);
        Self { model, state }
    }
}

impl crate::engine::Decoder for CpuDecoder {
    fn set_audio(
        &mut self,
        encoder_out: &[f32],
        threads: usize,
    ) -> Result<(), crate::error::Error> {
        self.state
            .set_audio(native(&self.model), encoder_out, threads);
        Ok(())
    }
    fn reset(&mut self, batch: usize) {
        self.state.reset(batch);
    }
    fn reorder(&mut self, sources: &[usize]) {
        self.state.reorder(sources);
    }
    fn forward(
        &mut self,
        tokens: &[u32],
        extra: Option<usize>,
        threads: usize,
    ) -> Result<(), crate::error::Error> {
        self.state
            .forward(native(&self.model), tokens, extra, threads);
        Ok(())
    }
    fn max_verify(&self) -> usize {
        super::MAX_VERIFY
    }
    fn forward_verify(
        &mut self,
        tokens: &[u32],
        threads: usize,
    ) -> Result<(), crate::error::Error> {
        self.state
            .forward_verify(native(&self.model), tokens, threads);
        Ok(())
    }
    fn truncate(&mut self, len: usize) {
        self.state.truncate(len);
    }
    fn logits_row(&self, i: usize) -> &[f32] {
        self.state.logits_row(i)
    }
    fn len(&self) -> usize {
        self.state.len()
    }
    fn batch(&self) -> usize {
        self.state.batch()
    }
    fn set_live(&mut self, live: bool) {
        self.state.set_precise(live);
    }
    fn set_screening(&mut self, exact_from: Option<usize>) {
        self.state.set_screening(exact_from);
    }
    fn refine(&self, row: usize, logits: &mut [f32]) -> usize {
        self.state.refine(native(&self.model), row, logits)
    }
    fn can_capture(&self) -> bool {
        true
    }
    fn forward_capture(
        &mut self,
        tokens: &[u32],
        heads: &[(usize, usize)],
        frames: usize,
        threads: usize,
    ) -> Result<Vec<f32>, crate::error::Error> {
        Ok(self
            .state
            .forward_capture(native(&self.model), tokens, heads, frames, threads))
    }
    fn next_token_probabilities(
        &mut self,
        tokens: &[u32],
        from: usize,
        eot: usize,
        threads: usize,
    ) -> Result<Vec<f32>, crate::error::Error> {
        Ok(self
            .state
            .next_token_probabilities(native(&self.model), tokens, from, eot, threads))
    }
}
