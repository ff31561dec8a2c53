using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Inference.Tests;

/// <summary>Keeps a copy of what the UNet got and returned at every call of a generation.</summary>
public sealed class UNetCallRecorder : IUNetInputObserver
{
    public List<double> Timesteps { get; } = [];
    public List<float[]> Samples { get; } = [];
    public List<float[]> TextStates { get; } = [];
    public List<float[]> TimestepCond { get; } = [];
    public List<float[]> Outputs { get; } = [];
    public List<bool> Shallow { get; } = [];

    public void Observe(ReadOnlySpan<float> sample, double timestep, ReadOnlySpan<float> encoderHiddenStates, ReadOnlySpan<float> timestepCond)
    {
        Timesteps.Add(timestep);
        Samples.Add(sample.ToArray());
        TextStates.Add(encoderHiddenStates.ToArray());
        TimestepCond.Add(timestepCond.ToArray());
    }

    public void ObserveOutput(ReadOnlySpan<float> output, bool shallow)
    {
        Outputs.Add(output.ToArray());
        Shallow.Add(shallow);
    }
}
