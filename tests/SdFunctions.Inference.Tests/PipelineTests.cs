using SdFunctions.Inference.Pipeline;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace SdFunctions.Inference.Tests;

/// <summary>The whole pipeline on the tiny bundle against diffusers' StableDiffusionPipeline (reference/pipeline.json).</summary>
[Collection(TinyPipelineCollection.Name)]
public class PipelineTests(TinyPipelineFixture fixture)
{
    private StableDiffusionPipeline Pipeline => fixture.Pipeline;
    private const string Prompt = "a drawing of a green pokemon with red eyes";

    [Theory]
    [InlineData("pndm"), InlineData("ddim")]
    public async Task TenStepsFromGivenLatentsMatchDiffusers(string run)
    {
        var result = await Pipeline.GenerateAsync(new GenerationRequest
        {
            Prompt = Prompt, NegativePrompt = "", GuidanceScale = 7.5, Steps = 10, Scheduler = run,
            InitialLatents = Fixtures.Floats("pipeline", $"{run}/initial_latents"),
        });

        Assert.Equal(Fixtures.Longs("pipeline", $"{run}/timesteps").Length, result.Timings.Steps.Count);
        // Latents grow to ±35 with random weights: the bound is 1e-3 max abs on the final latents.
        Close.AllClose(Fixtures.Floats("pipeline", $"{run}/final_latents"), result.Latents, 1e-3, $"{run} final latents");

        // Pixels: within 1 level per channel of diffusers' PNG, and our PNG holds exactly our pixels.
        using var reference = Image.Load<Rgb24>(Path.Combine(Fixtures.Reference, $"pipeline_{run}.png"));
        byte[] expected = new byte[256 * 256 * 3];
        reference.CopyPixelDataTo(expected);
        int worst = expected.Zip(result.Rgb, (e, a) => Math.Abs(e - a)).Max();
        Assert.True(worst <= 1, $"{run}: a pixel channel differs by {worst} levels from the reference PNG");

        using var ours = Image.Load<Rgb24>(await result.ToPngAsync());
        byte[] decoded = new byte[256 * 256 * 3];
        ours.CopyPixelDataTo(decoded);
        Assert.Equal(result.Rgb, decoded);
    }

    [Fact]
    public async Task PromptEmbeddingsMatchWhatTheUNetReceived()
    {
        float[] embeds = Fixtures.Floats("pipeline", "pndm/prompt_embeds"); // [negative "", prompt]
        int half = 77 * 32;
        float[] empty = await Pipeline.EncodePromptAsync("");
        float[] prompt = await Pipeline.EncodePromptAsync(Prompt);
        Close.AllClose(embeds.AsSpan(0, half), empty, 1e-4, "empty prompt embedding");
        Close.AllClose(embeds.AsSpan(half, half), prompt, 1e-4, "prompt embedding");
    }

    [Fact]
    public async Task TimingsSplitEachPhaseIntoModelRunsAndOverhead()
    {
        var result = await Pipeline.GenerateAsync(new GenerationRequest { Prompt = "a castle", Steps = 5, Seed = 3, Scheduler = "ddim" });
        var t = result.Timings;
        Assert.Equal(5, t.UNetRuns.Count);
        Assert.All(t.UNetRuns.Zip(t.Steps), p => Assert.InRange(p.First, TimeSpan.FromTicks(1), p.Second)); // a UNet run is inside its step
        Assert.InRange(t.TextEncoderRuns, TimeSpan.FromTicks(1), t.Encode);
        Assert.InRange(t.VaeRun, TimeSpan.FromTicks(1), t.Decode);
        Assert.InRange(t.Overhead, TimeSpan.Zero, t.Total);
        Assert.Equal(t.Total - t.TextEncoderRuns - t.VaeRun - t.UNetRuns.Aggregate(TimeSpan.Zero, (a, b) => a + b), t.Overhead);
    }

    [Fact]
    public async Task DecodingAGenerationsLatentsGivesItsImage()
    {
        var result = await Pipeline.GenerateAsync(new GenerationRequest { Prompt = "a castle", Steps = 3, Seed = 9 });
        Assert.Equal(result.Rgb, await Pipeline.DecodeLatentsAsync(result.Latents));
        await Assert.ThrowsAsync<InvalidGenerationRequestException>(() => Pipeline.DecodeLatentsAsync(new float[7]));
    }

    [Fact]
    public async Task TheSeedDeterminesTheImage()
    {
        var request = new GenerationRequest { Prompt = "a castle", Steps = 4, Seed = 1234 };
        var a = await Pipeline.GenerateAsync(request);
        var b = await Pipeline.GenerateAsync(request);
        var c = await Pipeline.GenerateAsync(request with { Seed = 1235 });
        Assert.Equal(1234, a.Seed);
        Assert.Equal(a.Rgb, b.Rgb);
        Assert.Equal(await a.ToPngAsync(), await b.ToPngAsync());
        Assert.NotEqual(a.Rgb, c.Rgb);
    }

    [Fact]
    public void SeededNoiseIsStandardNormalAndFixedBySpec()
    {
        // The documented algorithm's first values for seed 0 must never change: old seeds must keep their images.
        var noise = new SeededGaussianNoise(0);
        float[] first = new float[4];
        noise.Fill(first);
        var again = new float[4];
        new SeededGaussianNoise(0).Fill(again);
        Assert.Equal(first, again);

        var many = new float[200_000];
        new SeededGaussianNoise(7).Fill(many);
        double mean = many.Average(v => (double)v), variance = many.Average(v => (v - mean) * (v - mean));
        Assert.InRange(mean, -0.01, 0.01);
        Assert.InRange(variance, 0.98, 1.02);
    }

    [Fact]
    public async Task AbsentSeedIsChosenAndReported()
    {
        var a = await Pipeline.GenerateAsync(new GenerationRequest { Prompt = "x", Steps = 1 });
        var b = await Pipeline.GenerateAsync(new GenerationRequest { Prompt = "x", Steps = 1, Seed = a.Seed });
        Assert.InRange(a.Seed, 0, GenerationRequest.MaxSeed);
        Assert.Equal(a.Rgb, b.Rgb);
    }

    [Fact]
    public async Task ProgressIsReportedForEveryStep()
    {
        var seen = new List<GenerationProgress>();
        var progress = new SynchronousProgress<GenerationProgress>(seen.Add);
        await Pipeline.GenerateAsync(new GenerationRequest { Prompt = "x", Steps = 5, Seed = 1, Scheduler = "pndm" }, progress);
        Assert.Equal(Enumerable.Range(1, 6), seen.Select(p => p.Step)); // PNDM: N + 1 UNet calls
        Assert.All(seen, p => Assert.Equal(6, p.Total));
        Assert.True(seen.Zip(seen.Skip(1), (x, y) => y.Elapsed >= x.Elapsed).All(ok => ok));
    }

    [Fact]
    public async Task CancellationStopsBetweenStepsAndThePipelineStaysUsable()
    {
        using var cts = new CancellationTokenSource();
        int steps = 0;
        var progress = new SynchronousProgress<GenerationProgress>(p => { steps = p.Step; if (p.Step == 2) cts.Cancel(); });
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            Pipeline.GenerateAsync(new GenerationRequest { Prompt = "x", Steps = 20, Seed = 1 }, progress, cts.Token));
        Assert.Equal(2, steps);

        var after = await Pipeline.GenerateAsync(new GenerationRequest { Prompt = "x", Steps = 2, Seed = 1 });
        Assert.Equal(256 * 256 * 3, after.Rgb.Length);
    }

    [Fact]
    public async Task GuidanceAtMostOneRunsTheUNetWithoutTheUnconditionalPass()
    {
        var unguided = await Pipeline.GenerateAsync(new GenerationRequest { Prompt = Prompt, Steps = 3, Seed = 5, GuidanceScale = 1.0 });
        var guided = await Pipeline.GenerateAsync(new GenerationRequest { Prompt = Prompt, Steps = 3, Seed = 5, GuidanceScale = 7.5 });
        Assert.NotEqual(unguided.Rgb, guided.Rgb);
        Assert.Contains(Pipeline.Sessions, s => s.Component == "unet");
        // With guidance 1 the result equals the batch-2 computation's conditional half alone; check it differs from
        // the unconditional (negative prompt) image, i.e. the prompt really conditioned it.
        var negativeOnly = await Pipeline.GenerateAsync(new GenerationRequest { Prompt = "", Steps = 3, Seed = 5, GuidanceScale = 1.0 });
        Assert.NotEqual(unguided.Rgb, negativeOnly.Rgb);
    }

    [Theory]
    [InlineData("euler"), InlineData("euler-a"), InlineData("lms"), InlineData("dpmpp-2m")]
    public async Task EverySchedulerGeneratesDeterministically(string scheduler)
    {
        var request = new GenerationRequest { Prompt = "a lighthouse", Steps = 4, Seed = 99, Scheduler = scheduler };
        var a = await Pipeline.GenerateAsync(request);
        var b = await Pipeline.GenerateAsync(request);
        Assert.Equal(scheduler, a.Scheduler);
        Assert.Equal(a.Rgb, b.Rgb);
        Assert.All(a.Latents, v => Assert.True(float.IsFinite(v)));
    }

    public static TheoryData<GenerationRequest, string> BadRequests() => new()
    {
        { new GenerationRequest { Prompt = "x", Steps = 0 }, "steps" },
        { new GenerationRequest { Prompt = "x", Steps = 151 }, "steps" },
        { new GenerationRequest { Prompt = "x", GuidanceScale = -0.5 }, "guidanceScale" },
        { new GenerationRequest { Prompt = "x", GuidanceScale = 30.5 }, "guidanceScale" },
        { new GenerationRequest { Prompt = "x", GuidanceScale = double.NaN }, "guidanceScale" },
        { new GenerationRequest { Prompt = "x", Scheduler = "heun" }, "scheduler" },
        { new GenerationRequest { Prompt = "x", Width = 512 }, "size" },
        { new GenerationRequest { Prompt = "x", InitialLatents = new float[10] }, "initialLatents" },
        { new GenerationRequest { Prompt = null! }, "prompt" },
    };

    [Theory, MemberData(nameof(BadRequests))]
    public async Task BadRequestsNameTheParameter(GenerationRequest request, string parameter)
    {
        var e = await Assert.ThrowsAsync<InvalidGenerationRequestException>(() => Pipeline.GenerateAsync(request));
        Assert.Equal(parameter, e.ParamName);
    }

    [Fact]
    public async Task LongPromptsAreTruncatedAndReported()
    {
        var result = await Pipeline.GenerateAsync(new GenerationRequest { Prompt = string.Join(' ', Enumerable.Repeat("tree", 100)), Steps = 1, Seed = 3 });
        Assert.True(result.PromptTruncated);
    }

    /// <summary>Progress&lt;T&gt; posts to the thread pool; tests need the report before the next step.</summary>
    private sealed class SynchronousProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
