namespace SdFunctions.Inference.Schedulers;

/// <summary>diffusers' EulerDiscreteScheduler (s_churn = 0, the pipeline's default): a first-order ODE step in σ.</summary>
public sealed class EulerDiscreteScheduler(SchedulerConfig config) : SigmaSchedulerBase(config)
{
    public const string ApiName = "euler";
    public override string Name => ApiName;

    public override void Step(ReadOnlySpan<float> modelOutput, double timestep, Span<float> sample, IGaussianNoise? noise = null)
    {
        EnsureStarted();
        float sigma = Sigmas[StepIndex], dt = Sigmas[StepIndex + 1] - sigma;
        var x0 = PredictOriginal(modelOutput, sample, sigma);
        for (int i = 0; i < sample.Length; i++)
        {
            float derivative = (sample[i] - x0[i]) / sigma;
            sample[i] += derivative * dt;
        }
        StepIndex++;
    }
}
