namespace SdFunctions.Inference.Schedulers;

/// <summary>diffusers' EulerAncestralDiscreteScheduler: an Euler step down to σ_down, then fresh noise of σ_up.</summary>
public sealed class EulerAncestralScheduler(SchedulerConfig config) : SigmaSchedulerBase(config)
{
    public const string ApiName = "euler-a";
    public override string Name => ApiName;
    protected override bool SupportsKarras => false;
    private float[] _noise = [];

    public override void Step(ReadOnlySpan<float> modelOutput, double timestep, Span<float> sample, IGaussianNoise? noise = null)
    {
        EnsureStarted();
        if (noise is null) throw new ArgumentNullException(nameof(noise), "Euler ancestral draws noise at every step: pass a noise source.");
        double from = Sigmas[StepIndex], to = Sigmas[StepIndex + 1];
        float sigmaUp = (float)Math.Sqrt(to * to * (from * from - to * to) / (from * from));
        float sigmaDown = (float)Math.Sqrt(to * to - (double)sigmaUp * sigmaUp);
        float sigma = (float)from, dt = sigmaDown - sigma;
        var x0 = PredictOriginal(modelOutput, sample, sigma);
        if (_noise.Length != sample.Length) _noise = new float[sample.Length];
        noise.Fill(_noise);
        for (int i = 0; i < sample.Length; i++)
        {
            float derivative = (sample[i] - x0[i]) / sigma;
            sample[i] = sample[i] + derivative * dt + _noise[i] * sigmaUp;
        }
        StepIndex++;
    }
}
