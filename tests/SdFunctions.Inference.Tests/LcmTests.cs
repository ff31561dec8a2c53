using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Schedulers;

namespace SdFunctions.Inference.Tests;

/// <summary>LCMScheduler, the guidance embedding and both LCM pipelines against diffusers 0.24 (reference/lcm.json).</summary>
public class LcmTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly SchedulerConfig LcmConfig = SchedulerConfig.Load(Path.Combine(Fixtures.TinyLcm, "scheduler", "scheduler_config.json"));
    private const int Latent = 4 * 32 * 32;

    [Theory]
    [InlineData(1), InlineData(2), InlineData(4), InlineData(8)]
    public void TimestepsFollowTheDiffusers024Rule(int steps)
    {
        var s = SchedulerCatalog.Create("lcm", LcmConfig);
        s.SetTimesteps(steps);
        Assert.Equal(Fixtures.Longs("lcm", $"timesteps_{steps}").Select(t => (double)t), s.Timesteps);
    }

    [Fact]
    public void ConfigAndAlphasAreLcmDreamshapersAndTheClassSelectsLcm()
    {
        Assert.Equal("lcm", SchedulerCatalog.DefaultFor(LcmConfig).Name);
        Assert.Equal(50, LcmConfig.OriginalInferenceSteps);
        Assert.Equal(10.0, LcmConfig.TimestepScaling);
        Close.RelClose(Fixtures.Floats("lcm", "alphas_cumprod"), NoiseSchedule.AlphasCumprod(LcmConfig), 1e-6, "alphas_cumprod");
        var s = new LcmScheduler(LcmConfig);
        Assert.Equal(50, s.MaxSteps);
        Assert.Throws<ArgumentOutOfRangeException>(() => s.SetTimesteps(51));
    }

    /// <summary>The reference rule: model_output = 0.1 · scaled_input + eps[i]; step noise injected as stored.</summary>
    [Fact]
    public void FourStepTrajectoryAndDenoisedMatch()
    {
        var s = SchedulerCatalog.Create("lcm", LcmConfig);
        s.SetTimesteps(4);
        const int n = 4 * 8 * 8;
        float[] eps = Fixtures.Floats("lcm", "traj/eps"), after = Fixtures.Floats("lcm", "traj/samples_after_step");
        float[] denoised = Fixtures.Floats("lcm", "traj/denoised"), scaledRef = Fixtures.Floats("lcm", "traj/scaled_input");
        var noise = new RecordedGaussianNoise(Fixtures.Floats("lcm", "traj/noise"));
        float[] x = Fixtures.Floats("lcm", "traj/init_latent").Select(v => v * s.InitNoiseSigma).ToArray();
        var scaled = new float[n];
        var output = new float[n];
        for (int i = 0; i < 4; i++)
        {
            double t = s.Timesteps[i];
            s.ScaleModelInput(x, t, scaled);
            Close.RelClose(scaledRef.AsSpan(i * n, n), scaled, 1e-6, $"scaled_input[{i}]");
            for (int k = 0; k < n; k++) output[k] = 0.1f * scaled[k] + eps[i * n + k];
            s.Step(output, t, x, noise);
            // Relative to each tensor's scale (x0 estimates reach ±40 at t = 999): float32 rounding only.
            Close.RelClose(denoised.AsSpan(i * n, n), s.PredictedOriginalSample, 1e-5, $"denoised[{i}]");
            Close.RelClose(after.AsSpan(i * n, n), x, 1e-5, $"samples_after_step[{i}]");
        }
        Assert.Equal(0, noise.Remaining); // noise after steps 0–2 only: the last step returns x0
        Assert.Equal(denoised.AsSpan(3 * n, n).ToArray(), after.AsSpan(3 * n, n).ToArray());
    }

    [Fact]
    public void GuidanceScaleEmbeddingMatchesDiffusers()
    {
        // Arguments reach 1000·w = 7500 rad, where one float32 ulp is 4.9e-4. We follow torch's float32 order with correctly
        // rounded exp; torch's vectorized exp is one ulp low for some frequencies (k = 4 here), which moves sin/cos by up to
        // 4.1e-4. Anything else (a wrong formula, order or constant) is off by O(1).
        const double tolerance = 5e-4;
        Close.AllClose(Fixtures.Floats("lcm", "guidance_embedding/w7.5_dim256"), GuidanceScaleEmbedding.Compute(7.5, 256), tolerance, "w 7.5, dim 256");
        float[] ws = Fixtures.Floats("lcm", "guidance_embedding/w_batch");
        foreach (int dim in new[] { 256, 512 })
        {
            float[] expected = Fixtures.Floats("lcm", $"guidance_embedding/w_batch_dim{dim}");
            for (int b = 0; b < ws.Length; b++)
                Close.AllClose(expected.AsSpan(b * dim, dim), GuidanceScaleEmbedding.Compute(ws[b], dim), tolerance, $"w {ws[b]}, dim {dim}");
        }
    }

    /// <summary>LatentConsistencyModelPipeline on tiny-lcm: batch 1, timestep_cond for w = 7.5, 4 steps, the last step's x0 decoded.</summary>
    [Fact]
    public async Task LatentConsistencyPipelineMatchesDiffusers()
    {
        using var pipeline = await StableDiffusionPipeline.LoadAsync(Fixtures.TinyLcm,
            new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions });
        var calls = new UNetCallRecorder();
        var result = await pipeline.GenerateAsync(new GenerationRequest
        {
            Prompt = "a drawing of a green pokemon with red eyes", // steps, guidance 8.5 and the scheduler are this model's defaults
            InitialLatents = Fixtures.Floats("lcm", "pipe/initial_latents"),
            StepNoise = new RecordedGaussianNoise(Fixtures.Floats("lcm", "pipe/step_noise")),
        }, progress: null, calls);

        Assert.Equal(("lcm", 4, 8.5, "guidance-embedding", 1, 4), (result.Scheduler, result.Steps, result.GuidanceScale, result.Conditioning, result.UNetBatch, result.UNetCalls));
        Assert.Equal(Fixtures.Longs("lcm", "pipe/timesteps").Select(t => (double)t), calls.Timesteps);
        Close.AllClose(Fixtures.Floats("lcm", "pipe/timestep_cond"), calls.TimestepCond[0], 5e-4, "timestep_cond (see GuidanceScaleEmbeddingMatchesDiffusers)");
        Close.AllClose(Fixtures.Floats("lcm", "pipe/prompt_embeds"), calls.TextStates[0], 1e-4, "prompt_embeds");
        float[] unetInputs = Fixtures.Floats("lcm", "pipe/unet_input_per_step");
        for (int i = 0; i < 4; i++) Close.RelClose(unetInputs.AsSpan(i * Latent, Latent), calls.Samples[i], 1e-4, $"unet input {i}");
        Close.AllClose(Fixtures.Floats("lcm", "pipe/final_latents"), result.Latents, 1e-3, "final latents");
        AssertImageWithinOneLevel("lcm_pipeline.png", result.Rgb);
        output.WriteLine($"LCM pipeline: final latents max abs {Close.MaxAbs(Fixtures.Floats("lcm", "pipe/final_latents"), result.Latents):E2}, " +
            $"timestep_cond max abs {Close.MaxAbs(Fixtures.Floats("lcm", "pipe/timestep_cond"), calls.TimestepCond[0]):E2}");
    }

    /// <summary>"LCM-LoRA style": a plain UNet (tiny-sd) with lcm and guidance 1 — batch 1, no unconditional pass.</summary>
    [Fact]
    public async Task LcmOnAPlainUNetMatchesDiffusers()
    {
        using var pipeline = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd,
            new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions });
        Assert.Equal(new GenerationDefaults("lcm", 4, 1.0, 50), pipeline.DefaultsFor("lcm"));
        var calls = new UNetCallRecorder();
        var result = await pipeline.GenerateAsync(new GenerationRequest
        {
            Prompt = "a photo of an astronaut riding a horse on mars", Scheduler = "lcm",
            InitialLatents = Fixtures.Floats("lcm", "lora_style/initial_latents"),
            StepNoise = new RecordedGaussianNoise(Fixtures.Floats("lcm", "lora_style/step_noise")),
        }, progress: null, calls);

        Assert.Equal(("none", 1, 4), (result.Conditioning, result.UNetBatch, result.UNetCalls));
        Assert.Equal(Fixtures.Longs("lcm", "lora_style/timesteps").Select(t => (double)t), calls.Timesteps);
        Assert.All(calls.TimestepCond, c => Assert.Empty(c));
        Close.AllClose(Fixtures.Floats("lcm", "lora_style/final_latents"), result.Latents, 1e-3, "final latents");
        AssertImageWithinOneLevel("lcm_lora_style.png", result.Rgb);
        output.WriteLine($"LCM-LoRA style: final latents max abs {Close.MaxAbs(Fixtures.Floats("lcm", "lora_style/final_latents"), result.Latents):E2}");
    }

    [Fact]
    public async Task AGuidanceDistilledModelRefusesANegativePromptAndTooManySteps()
    {
        using var pipeline = await StableDiffusionPipeline.LoadAsync(Fixtures.TinyLcm,
            new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions });
        Assert.True(pipeline.Bundle.GuidanceDistilled);
        Assert.Equal(256, pipeline.Bundle.UnetTimestepCondDim);
        Assert.Equal(1, pipeline.DefaultUNetBatch);
        Assert.Equal(new GenerationDefaults("lcm", 4, 8.5, 50), pipeline.DefaultsFor(null));
        var negative = await Assert.ThrowsAsync<InvalidGenerationRequestException>(() =>
            pipeline.GenerateAsync(new GenerationRequest { Prompt = "a cat", NegativePrompt = "blurry" }));
        Assert.Equal("negativePrompt", negative.ParamName);
        Assert.Contains("negative prompt", negative.Message);
        var steps = await Assert.ThrowsAsync<InvalidGenerationRequestException>(() =>
            pipeline.GenerateAsync(new GenerationRequest { Prompt = "a cat", Steps = 51 }));
        Assert.Equal("steps", steps.ParamName);

        // Its guidance scale is an input, not a second pass: a different scale changes the image at the same cost.
        var a = await pipeline.GenerateAsync(new GenerationRequest { Prompt = "a cat", Seed = 3, GuidanceScale = 8.5 });
        var b = await pipeline.GenerateAsync(new GenerationRequest { Prompt = "a cat", Seed = 3, GuidanceScale = 2.0 });
        Assert.NotEqual(a.Rgb, b.Rgb);
        Assert.Equal(a.UNetCalls, b.UNetCalls);
    }

    [Fact]
    public async Task StepNoiseThatRunsOutIsARequestError()
    {
        using var pipeline = await StableDiffusionPipeline.LoadAsync(Fixtures.TinyLcm,
            new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions });
        var e = await Assert.ThrowsAsync<InvalidGenerationRequestException>(() => pipeline.GenerateAsync(new GenerationRequest
        {
            Prompt = "a cat", Steps = 4, Seed = 1, StepNoise = new RecordedGaussianNoise(new float[2 * Latent]),
        }));
        Assert.Equal("stepNoise", e.ParamName);
    }

    private void AssertImageWithinOneLevel(string png, byte[] rgb)
    {
        int worst = Close.MaxLevels(Fixtures.Pixels(Path.Combine(Fixtures.Reference, png)), rgb);
        output.WriteLine($"{png}: worst pixel channel {worst} levels");
        Assert.True(worst <= 1, $"{png}: a pixel channel differs by {worst} levels");
    }
}
