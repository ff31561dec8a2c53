using SdFunctions.Inference.Schedulers;

namespace SdFunctions.Inference.Tests;

/// <summary>Every scheduler against diffusers 0.24 on SD 1.5's scheduler config (reference/schedulers.json).</summary>
public class SchedulerTests
{
    private static readonly SchedulerConfig Sd15 = SchedulerConfig.Load(Path.Combine(Fixtures.TinySd, "scheduler", "scheduler_config.json"));

    // Reference run name → (our scheduler name, config override).
    public static TheoryData<string, string, int> Runs()
    {
        var data = new TheoryData<string, string, int>();
        foreach (int n in new[] { 10, 25 })
            foreach (var (run, name) in new[] { ("pndm", "pndm"), ("ddim", "ddim"), ("euler", "euler"), ("euler_leading", "euler"),
                         ("lms", "lms"), ("dpmpp2m", "dpmpp-2m"), ("euler_ancestral", "euler-a") })
                data.Add(run, name, n);
        return data;
    }

    private static IScheduler Create(string run, string name) =>
        SchedulerCatalog.Create(name, run == "euler_leading" ? Sd15 with { TimestepSpacing = "leading" } : Sd15);

    [Fact]
    public void AlphasCumprodMatchesTorch()
    {
        float[] expected = Fixtures.Floats("schedulers", "alphas_cumprod");
        float[] actual = NoiseSchedule.AlphasCumprod(Sd15);
        Close.RelClose(expected, actual, 1e-6, "alphas_cumprod");
    }

    [Theory, MemberData(nameof(Runs))]
    public void TimestepsSigmasAndInitNoiseSigmaMatch(string run, string name, int steps)
    {
        var s = Create(run, name);
        s.SetTimesteps(steps);
        string key = $"{run}_{steps}";
        var meta = Fixtures.Meta("schedulers").GetProperty("runs").GetProperty(key);

        bool fractional = Fixtures.Index("schedulers").GetProperty("tensors").EnumerateArray()
            .First(t => t.GetProperty("name").GetString() == key + "/timesteps").GetProperty("dtype").GetString() == "float32";
        double[] expected = fractional
            ? Fixtures.Floats("schedulers", key + "/timesteps").Select(f => (double)f).ToArray()
            : Fixtures.Longs("schedulers", key + "/timesteps").Select(l => (double)l).ToArray();
        Assert.Equal(expected.Length, s.Timesteps.Count);
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], s.Timesteps[i], 3);

        double sigma0 = meta.GetProperty("init_noise_sigma").GetDouble();
        Assert.True(Math.Abs(s.InitNoiseSigma - sigma0) <= 1e-6 * sigma0, $"init_noise_sigma {s.InitNoiseSigma} vs {sigma0} (rel tol 1e-6)");

        if (Fixtures.Has("schedulers", key + "/sigmas"))
        {
            float[] sigmas = s switch
            {
                SigmaSchedulerBase sb => sb.Sigmas,
                DpmSolverMultistepScheduler d => d.Sigmas,
                _ => throw new Xunit.Sdk.XunitException($"{name} has no sigmas"),
            };
            Close.RelClose(Fixtures.Floats("schedulers", key + "/sigmas"), sigmas, 1e-6, key + " sigmas");
        }
    }

    /// <summary>The reference's trajectory rule: model_output = 0.1 · scaled_input + eps[i].</summary>
    [Theory, MemberData(nameof(Runs))]
    public void TrajectoryMatches(string run, string name, int steps)
    {
        var s = Create(run, name);
        s.SetTimesteps(steps);
        string key = $"{run}_{steps}";
        float[] eps = Fixtures.Floats("schedulers", "eps");
        float[] ancestral = Fixtures.Floats("schedulers", "ancestral_noise");
        float[] scaledRef = Fixtures.Floats("schedulers", key + "/scaled_input");
        float[] afterRef = Fixtures.Floats("schedulers", key + "/samples_after_step");
        float[]? x0Ref = Fixtures.Has("schedulers", key + "/pred_original_sample") ? Fixtures.Floats("schedulers", key + "/pred_original_sample") : null;
        const int n = 4 * 8 * 8;

        float[] x = Fixtures.Floats("schedulers", "init_latent").Select(v => v * s.InitNoiseSigma).ToArray();
        var scaled = new float[n];
        var output = new float[n];
        var noise = new ReplayNoise(ancestral, n);
        for (int i = 0; i < s.Timesteps.Count; i++)
        {
            double t = s.Timesteps[i];
            s.ScaleModelInput(x, t, scaled);
            Close.RelClose(scaledRef.AsSpan(i * n, n), scaled, 1e-5, $"{key} scaled_input[{i}]");
            for (int k = 0; k < n; k++) output[k] = 0.1f * scaled[k] + eps[i * n + k];
            s.Step(output, t, x, noise);
            // Relative to the tensor's scale: the sigma-space samples start at ±40.
            Close.RelClose(afterRef.AsSpan(i * n, n), x, 1e-5, $"{key} samples_after_step[{i}]");
            if (x0Ref is not null) Close.RelClose(x0Ref.AsSpan(i * n, n), s.PredictedOriginalSample, 1e-5, $"{key} pred_original_sample[{i}]");
        }
    }

    /// <summary>Hands out the reference's stored noise, one step's worth per call.</summary>
    private sealed class ReplayNoise(float[] all, int perStep) : IGaussianNoise
    {
        private int _next;
        public void Fill(Span<float> destination) => all.AsSpan(_next++ * perStep, perStep).CopyTo(destination);
    }

    [Theory]
    [InlineData("euler"), InlineData("lms"), InlineData("dpmpp-2m")]
    public void KarrasSigmasFollowTheRhoSevenRamp(string name)
    {
        var s = SchedulerCatalog.Create(name, Sd15, karras: true);
        s.SetTimesteps(20);
        float[] sigmas = s is SigmaSchedulerBase sb ? sb.Sigmas : ((DpmSolverMultistepScheduler)s).Sigmas;
        float[] training = NoiseSchedule.TrainingSigmas(NoiseSchedule.AlphasCumprod(Sd15));
        // Endpoints are the training range (σ at t=999 … σ at t=0, or the interpolated ends), strictly decreasing between.
        Assert.Equal(training[^1], sigmas[0], 3);
        for (int i = 1; i < 20; i++) Assert.True(sigmas[i] < sigmas[i - 1], $"{name}: sigma {i} does not decrease");
        // The ramp is linear in σ^(1/7).
        double d0 = Math.Pow(sigmas[0], 1 / 7.0) - Math.Pow(sigmas[1], 1 / 7.0);
        double d9 = Math.Pow(sigmas[9], 1 / 7.0) - Math.Pow(sigmas[10], 1 / 7.0);
        Assert.Equal(d0, d9, 4);
        // Timesteps map back onto the same sigmas (they are what the UNet sees) and descend.
        for (int i = 1; i < 20; i++) Assert.True(s.Timesteps[i] <= s.Timesteps[i - 1]);
        Assert.Equal(999, s.Timesteps[0], 0);
    }

    [Fact]
    public void DefaultSchedulerComesFromTheConfigClass()
    {
        Assert.Equal("pndm", SchedulerCatalog.DefaultFor(Sd15).Name);
        Assert.Equal("dpmpp-2m", SchedulerCatalog.DefaultFor(Sd15 with { ClassName = "DPMSolverMultistepScheduler" }).Name);
    }

    [Theory]
    [InlineData("""{"prediction_type": "sample"}""", "prediction_type")]
    [InlineData("""{"timestep_spacing": "sideways"}""", "timestep_spacing")]
    [InlineData("""{"beta_schedule": "exotic"}""", "beta_schedule")]
    [InlineData("""[1, 2]""", "JSON object")]
    public void BadConfigsAreRejectedByName(string json, string expected)
    {
        var e = Assert.ThrowsAny<Exception>(() => SchedulerConfig.Parse(json));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void PndmRefusesTheRungeKuttaWarmUpItDoesNotImplement()
    {
        var e = Assert.Throws<InvalidDataException>(() => new PndmScheduler(Sd15 with { SkipPrkSteps = false }));
        Assert.Contains("skip_prk_steps", e.Message);
        Assert.True(SchedulerCatalog.TryCreate("pndm", Sd15 with { SkipPrkSteps = null }, out _)); // no key: PLMS, as SD pipelines run it
        Assert.False(SchedulerCatalog.TryCreate("pndm", Sd15 with { SkipPrkSteps = false }, out string? why));
        Assert.Contains("PRK", why);
    }

    [Fact]
    public void UnknownSchedulerNameListsTheKnownOnes()
    {
        var e = Assert.Throws<ArgumentException>(() => SchedulerCatalog.Create("heun", Sd15));
        Assert.Contains("dpmpp-2m", e.Message);
    }

    [Fact]
    public void EachCatalogRowBuildsTheSchedulerOfItsNameAndItsDiffusersClassChoosesIt()
    {
        foreach (var row in SchedulerCatalog.All)
        {
            var config = Sd15 with { ClassName = row.DiffusersClass, OriginalInferenceSteps = 50 };
            Assert.Equal(row.Name, row.Create(config).Name);
            Assert.Same(row, SchedulerCatalog.DefaultFor(config));
        }
        Assert.Equal(SchedulerCatalog.All.Count, SchedulerCatalog.Names.Distinct().Count());
        Assert.Equal(["euler", "lms", "dpmpp-2m"], SchedulerCatalog.WithKarrasSigmas);
        Assert.Equal("Euler a", SchedulerCatalog.SamplerName("euler-a"));
    }
}
