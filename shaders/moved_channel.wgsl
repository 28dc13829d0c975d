// One-channel routes of the perturbed-loss engine (src/numgrad). A change of one convolution
// filter, or of one channel's BatchNorm γ or β, moves one channel of each copy's activations,
// and the channel-local layers above it (BatchNorm, activations, dropout, pooling) keep the
// change in that channel. Such a route dispatches copies·N·S invocations, not copies·N·C·S:
// invocation i works on one element of its copy's moved channel, moved[p]. A copy's other
// channels are neither written nor read; the affine layer that ends the route adds the moved
// channel's change to the unperturbed output (affine_delta.wgsl).

// Index in a [copies, N, C, S] tensor (S = `plane`) of invocation i of a one-channel dispatch,
// whose copy's moved channel is `channel`.
fn moved_channel_index(i: u32, n: u32, c: u32, plane: u32, channel: u32) -> u32 {
    let per_copy = n * plane;
    let r = i % per_copy;
    return (((i / per_copy) * n + r / plane) * c + channel) * plane + r % plane;
}
