using SdFunctions.Inference.Schedulers;

namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// Noise given by the caller instead of drawn: each <see cref="Fill"/> takes the next values in order. Lets a run
/// reproduce one whose schedulers drew their step noise elsewhere (torch.randn in diffusers' references).
/// </summary>
public sealed class RecordedGaussianNoise(float[] values) : IGaussianNoise
{
    private int _next;

    /// <summary>How many values have not been used yet.</summary>
    public int Remaining => values.Length - _next;

    public void Fill(Span<float> destination)
    {
        if (destination.Length > Remaining)
            throw new InvalidGenerationRequestException("stepNoise",
                $"The given step noise ran out: a step needs {destination.Length} values, {Remaining} of {values.Length} are left.");
        values.AsSpan(_next, destination.Length).CopyTo(destination);
        _next += destination.Length;
    }
}
