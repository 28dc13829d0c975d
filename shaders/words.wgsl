// The named words of the trainer's two bookkeeping buffers, included by the shaders that read or
// write them. src/train/metrics.rs writes the same layout in Rust; a test there checks that the
// two agree.
//
// state (u32): the step counter and its bookkeeping.
const STATE_STEP: u32 = 0u;          // completed training steps t
const STATE_BATCH: u32 = 1u;         // batch number within the epoch
const STATE_DIVERGED: u32 = 2u;      // first step whose loss was not finite, + 1 (0: none)
const STATE_EVAL_BATCH: u32 = 3u;    // evaluation batch number
const STATE_WORDS: u32 = 4u;
// stats (real): losses, correct counts and the L2 penalty.
const STATS_LOSS_SUM: u32 = 0u;      // Σ step losses of the epoch
const STATS_LAST_LOSS: u32 = 1u;     // the last step's loss
const STATS_CORRECT_SUM: u32 = 2u;   // Σ correct predictions of the epoch's steps
const STATS_L2_PENALTY: u32 = 3u;    // the L2 penalty of this step
const STATS_EVAL_LOSS: u32 = 4u;     // Σ evaluation loss
const STATS_EVAL_CORRECT: u32 = 5u;  // Σ evaluation correct
const STATS_EVAL_ROWS: u32 = 6u;     // evaluation rows (padding excluded)
const STATS_DIVERGED_LOSS: u32 = 7u; // the loss of the first non-finite step
const STATS_WORDS: u32 = 8u;
