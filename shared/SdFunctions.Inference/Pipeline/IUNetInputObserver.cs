namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// Sees what the UNet is given at each call, just before it runs: the (scaled) latents of the whole batch, the timestep,
/// the text conditioning and, for guidance-distilled UNets, the guidance embedding (empty otherwise). Quantization
/// calibrates on these real inputs.
/// </summary>
public interface IUNetInputObserver
{
    void Observe(ReadOnlySpan<float> sample, double timestep, ReadOnlySpan<float> encoderHiddenStates, ReadOnlySpan<float> timestepCond);

    /// <summary>What that call returned (the whole batch, before guidance combines it) and whether only DeepCache's shallow branch ran.</summary>
    void ObserveOutput(ReadOnlySpan<float> output, bool shallow) { }
}
