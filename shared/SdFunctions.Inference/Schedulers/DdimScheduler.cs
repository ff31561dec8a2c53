namespace SdFunctions.Inference.Schedulers;

/// <summary>diffusers' DDIMScheduler, deterministic (eta = 0) as StableDiffusionPipeline calls it.</summary>
public sealed class DdimScheduler(SchedulerConfig config) : SchedulerBase(config)
{
    public const string ApiName = "ddim";
    public override string Name => ApiName;
    protected override string DefaultSpacing => "leading";
    private bool SetAlphaToOne => Config.SetAlphaToOne ?? true;
    private bool ClipSample => Config.ClipSample ?? true;

    protected override void Reset(int n) =>
        Timesteps = NoiseSchedule.DiscreteTimesteps(Spacing, Config.NumTrainTimesteps, n, Config.StepsOffset);

    public override void Step(ReadOnlySpan<float> modelOutput, double timestep, Span<float> sample, IGaussianNoise? noise = null)
    {
        EnsureStarted();
        int t = (int)timestep, prevT = t - Config.NumTrainTimesteps / NumInferenceSteps;
        double aT = AlphasCumprod[t], aPrev = AlphaProd(prevT, SetAlphaToOne), bT = 1 - aT;
        float sqrtA = (float)Math.Sqrt(aT), sqrtB = (float)Math.Sqrt(bT);
        float sqrtAPrev = (float)Math.Sqrt(aPrev), dirCoeff = (float)Math.Sqrt(1 - aPrev);
        float range = (float)Config.ClipSampleRange;
        bool epsilon = Config.PredictionType == "epsilon";
        var x0 = EnsurePredOriginal(sample.Length);
        for (int i = 0; i < sample.Length; i++)
        {
            float x = sample[i], mo = modelOutput[i];
            float predX0 = epsilon ? (x - sqrtB * mo) / sqrtA : sqrtA * x - sqrtB * mo;
            float predEps = epsilon ? mo : sqrtA * mo + sqrtB * x;
            if (ClipSample) predX0 = Math.Clamp(predX0, -range, range);
            x0[i] = predX0;
            sample[i] = sqrtAPrev * predX0 + dirCoeff * predEps;
        }
        StepIndex++;
    }
}
