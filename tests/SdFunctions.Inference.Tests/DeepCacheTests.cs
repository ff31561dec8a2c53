using Onnx;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;
using SdFunctions.Optimizer;
using SdFunctions.Optimizer.Quantization;
using Xunit.Abstractions;

namespace SdFunctions.Inference.Tests;

/// <summary>Two tiny-sd bundles cut for DeepCache (branch 0), one with a batch-2 UNet and one with a batch-1 UNet, loaded once.</summary>
public sealed class DeepCacheFixture : IAsyncLifetime
{
    public string Batch2Bundle { get; } = Fixtures.TempDirectory("sdf-deepcache-b2");
    public string Batch1Bundle { get; } = Fixtures.TempDirectory("sdf-deepcache-b1");
    public OptimizeManifest Manifest { get; private set; } = null!;
    public StableDiffusionPipeline Batch2 { get; private set; } = null!;
    public StableDiffusionPipeline Batch1 { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Manifest = await BundleOptimizer.OptimizeAsync(new OptimizeOptions { ModelDirectory = Fixtures.TinySd, OutputDirectory = Batch2Bundle, DeepCache = true });
        await BundleOptimizer.OptimizeAsync(new OptimizeOptions { ModelDirectory = Fixtures.TinySd, OutputDirectory = Batch1Bundle, DeepCache = true, Batch = 1 });
        Batch2 = await StableDiffusionPipeline.LoadAsync(Batch2Bundle, new PipelineOptions { WarmUp = false });
        Batch1 = await StableDiffusionPipeline.LoadAsync(Batch1Bundle, new PipelineOptions { WarmUp = false });
    }

    public Task DisposeAsync()
    {
        Batch2.Dispose();
        Batch1.Dispose();
        return Task.CompletedTask;
    }
}

/// <summary>DeepCache as two ONNX graphs, against DeepCacheSDHelper on diffusers (reference/deepcache.json, interval 3, branch 0).</summary>
[Collection(TinyPipelineCollection.Name)]
public class DeepCacheTests(TinyPipelineFixture plain, DeepCacheFixture deepCache, ITestOutputHelper output) : IClassFixture<DeepCacheFixture>
{
    private const string Prompt = "a drawing of a green pokemon with red eyes";

    private static GenerationRequest Request(string scheduler, int interval) => new()
    {
        Prompt = Prompt, NegativePrompt = "", GuidanceScale = 7.5, Steps = 10, Scheduler = scheduler, CacheInterval = interval,
        InitialLatents = Fixtures.Floats("deepcache", "initial_latents"),
    };

    [Theory]
    [InlineData("pndm", 2), InlineData("ddim", 2), InlineData("ddim", 1)]
    public async Task CachedStepsMatchDeepCacheOnDiffusers(string scheduler, int batch)
    {
        var pipeline = batch == 2 ? deepCache.Batch2 : deepCache.Batch1;
        var calls = new UNetCallRecorder();
        var result = await pipeline.GenerateAsync(Request(scheduler, 3), progress: null, calls);
        string run = $"{scheduler}_deepcache";

        // Which calls ran in full: DeepCache's own indexing (PNDM's repeated 801 gives calls 1 and 2 the same index).
        byte[] isFull = Fixtures.Bytes("deepcache", $"{run}/is_full_step");
        bool[] ours = batch == 2 ? [.. calls.Shallow.Select(s => !s)] : [.. calls.Shallow.Where((_, k) => k % 2 == 0).Select(s => !s)];
        Assert.Equal(isFull.Select(b => b == 1), ours);
        Assert.Equal(isFull.Count(b => b == 0) * (batch == 2 ? 1 : 2), result.ShallowUNetCalls);
        Assert.Equal(3, result.CacheInterval);

        // Every UNet output [2, 4, 32, 32] (uncond; text), shallow ones included.
        float[] expected = Fixtures.Floats("deepcache", $"{run}/unet_output_per_step");
        int size = 2 * 4 * 32 * 32;
        double worst = 0;
        for (int call = 0; call < isFull.Length; call++)
        {
            float[] actual = batch == 2 ? calls.Outputs[call] : [.. calls.Outputs[2 * call], .. calls.Outputs[2 * call + 1]];
            double diff = Close.MaxAbs(expected.AsSpan(call * size, size), actual);
            worst = Math.Max(worst, diff);
            // ONNX Runtime vs torch is ~2e-6 here (full and cached calls alike): 10× margin.
            Assert.True(diff <= 2e-5, $"{run} batch {batch}: UNet call {call} ({(isFull[call] == 1 ? "full" : "cached")}) is off by {diff:E2}");
        }
        output.WriteLine($"{run} batch {batch}: worst UNet output diff {worst:E2}");

        Close.AllClose(Fixtures.Floats("deepcache", $"{run}/final_latents"), result.Latents, 1e-3, $"{run} final latents");
        int levels = Close.MaxLevels(Fixtures.Pixels(Path.Combine(Fixtures.Reference, $"deepcache_{run}.png")), result.Rgb);
        Assert.True(levels <= 1, $"{run}: a pixel channel differs by {levels} levels from DeepCache's PNG");
    }

    [Theory]
    [InlineData("pndm"), InlineData("ddim")]
    public async Task IntervalOneIsThePlainPipeline(string scheduler)
    {
        var cached = await deepCache.Batch2.GenerateAsync(Request(scheduler, 1));
        var uncut = await plain.Pipeline.GenerateAsync(Request(scheduler, 1) with { CacheInterval = null });
        Assert.Equal(0, cached.ShallowUNetCalls);
        Assert.Null(cached.CacheSchedule);
        Assert.Equal(uncut.Latents, cached.Latents);
        Assert.Equal(uncut.Rgb, cached.Rgb);
        Assert.Equal(Fixtures.Bytes("deepcache", $"{scheduler}_plain/image_uint8").Length, cached.Rgb.Length);
    }

    [Fact]
    public void TheCutSharesTheUNetsWeightsAndKeepsOnlyTheShallowBranch()
    {
        string unet = Path.Combine(deepCache.Batch2Bundle, "unet");
        Assert.Equal(["config.json", "model.onnx", "model.onnx_data", ModelBundle.DeepCacheFullFile, ModelBundle.DeepCacheShallowFile],
            Directory.GetFiles(unet).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        var shallow = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(unet, ModelBundle.DeepCacheShallowFile)));
        var full = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(unet, ModelBundle.DeepCacheFullFile)));
        Assert.All(shallow.Graph.Initializer.Concat(full.Graph.Initializer).Where(ModelFiles.IsExternal),
            t => Assert.Equal(ModelFiles.DataFileName, t.ExternalData.First(e => e.Key == "location").Value));

        // The modules DeepCache's helper runs on a cached step (reference README), and nothing deeper.
        var prefixes = shallow.Graph.Node.Select(n => n.Name).Where(n => n.StartsWith('/')).Select(n => string.Join('/', n.Split('/').Take(3))).ToHashSet();
        Assert.Contains("/up_blocks.3/resnets.2", prefixes);
        Assert.Contains("/up_blocks.3/attentions.2", prefixes);
        Assert.Contains(shallow.Graph.Node, n => n.Name.StartsWith("/conv_in/", StringComparison.Ordinal));
        Assert.Contains(shallow.Graph.Node, n => n.Name.StartsWith("/time_embedding/", StringComparison.Ordinal));
        // The exporter shares silu(temb) among all resnets under the first one's name: the only node of a down block left.
        Assert.Equal(["/down_blocks.0/resnets.0/act_1/Mul", "/down_blocks.0/resnets.0/act_1/Sigmoid"],
            shallow.Graph.Node.Where(n => n.Name.StartsWith("/down_blocks.", StringComparison.Ordinal)).Select(n => n.Name).Order(StringComparer.Ordinal));
        Assert.DoesNotContain(shallow.Graph.Node, n => n.Name.StartsWith("/mid_block/", StringComparison.Ordinal)
            || n.Name.StartsWith("/up_blocks.3/resnets.1/", StringComparison.Ordinal) || n.Name.StartsWith("/up_blocks.3/attentions.1/", StringComparison.Ordinal)
            || n.Name is "/up_blocks.3/Concat" or "/up_blocks.3/Concat_1" || n.Name.StartsWith("/up_blocks.2/", StringComparison.Ordinal));
        Assert.Equal("/up_blocks.3/attentions.1/Add_output_0", deepCache.Manifest.DeepCache!.Feature);
        Assert.Equal([2L, 32, 32, 32], deepCache.Manifest.DeepCache.FeatureShape);
        Assert.InRange(deepCache.Manifest.DeepCache.ShallowNodes, 1, deepCache.Manifest.DeepCache.FullNodes / 10);
    }

    [Fact]
    public async Task ItComposesWithInt8TokenMergingAndFusedAttention()
    {
        string bundle = Fixtures.TempDirectory("sdf-deepcache-all");
        var manifest = await BundleOptimizer.OptimizeAsync(new OptimizeOptions
        {
            ModelDirectory = Fixtures.TinySd, OutputDirectory = bundle, DeepCache = true, TomeRatio = 0.4, FuseAttention = true,
            Quantization = new QuantizationOptions(), CalibrationSteps = 2,
        });
        Assert.NotEmpty(manifest.TokenMerging);
        Assert.True(manifest.FusedAttentions > 0);
        var shallow = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(bundle, "unet", ModelBundle.DeepCacheShallowFile)));
        Assert.Contains(shallow.Graph.Node, n => n.OpType == "QuantizeLinear");
        Assert.Contains(shallow.Graph.Node, n => n.OpType == "MultiHeadAttention");

        using var pipeline = await StableDiffusionPipeline.LoadAsync(bundle, new PipelineOptions { WarmUp = false });
        var full = await pipeline.GenerateAsync(Request("ddim", 1));
        var cached = await pipeline.GenerateAsync(Request("ddim", 3));
        Assert.Equal(6, cached.ShallowUNetCalls);
        double psnr = Close.Psnr(full.Rgb, cached.Rgb);
        output.WriteLine($"int8 + ToMe + fused attention, interval 3 vs 1: PSNR {psnr:F1} dB, latents rel L2 {Close.RelativeL2(full.Latents, cached.Latents):F3}");
        // DeepCache on diffusers' float UNet moves these latents by 8.6 % (reference meta); the same cut on this UNet must stay of that order.
        Assert.InRange(Close.RelativeL2(full.Latents, cached.Latents), 0.01, 0.3);
    }

    [Fact]
    public async Task RequestsTheModelCannotCacheAreRefused()
    {
        var noGraphs = await Assert.ThrowsAsync<InvalidGenerationRequestException>(() => plain.Pipeline.GenerateAsync(Request("ddim", 3)));
        Assert.Equal("cacheInterval", noGraphs.ParamName);
        Assert.Contains("--deep-cache", noGraphs.Message);
        foreach (int bad in new[] { 0, DeepCacheSchedule.MaxInterval + 1 })
            Assert.Equal("cacheInterval", Assert.Throws<InvalidGenerationRequestException>(() => Request("ddim", bad).ValidateParameters()).ParamName);
        Assert.Equal("cacheSchedule", Assert.Throws<InvalidGenerationRequestException>(
            () => (Request("ddim", 3) with { CacheSchedule = "sometimes" }).ValidateParameters()).ParamName);
    }

    [Fact]
    public void TheUniformScheduleIndexesCallsAsDeepCachesHelper()
    {
        double[] pndm = [.. Fixtures.Longs("deepcache", "pndm_deepcache/timesteps").Select(t => (double)t)];
        Assert.Equal([0, 3, 6, 9], DeepCacheSchedule.Create(3, DeepCacheSchedule.Uniform, pndm, 10).FullCalls);
        Assert.Equal(Fixtures.Longs("deepcache", "pndm_deepcache/deepcache_index_per_call").Select((_, k) => k),
            DeepCacheSchedule.Create(1, DeepCacheSchedule.Uniform, pndm, 10).FullCalls);
        Assert.Equal([0, 2, 4, 6, 8], DeepCacheSchedule.Create(2, DeepCacheSchedule.Uniform, [.. Enumerable.Range(0, 10).Select(k => 901.0 - 100 * k)], 10).FullCalls);
    }

    /// <summary>
    /// Expected sets are what DeepCache's <c>sample_from_quad_center(steps, ⌈steps/interval⌉, center=⌊0.3·steps⌋, pow=1.4)</c>
    /// (DeepCache/sd/pipeline_stable_diffusion.py L86–96) returns, evaluated with Python's complex arithmetic.
    /// </summary>
    [Theory]
    [InlineData(50, 3, new[] { 0, 3, 6, 8, 11, 13, 15, 17, 20, 22, 25, 28, 32, 35, 38, 42, 46 })]
    [InlineData(50, 5, new[] { 0, 5, 9, 13, 17, 21, 26, 31, 37, 43 })]
    [InlineData(20, 2, new[] { 0, 2, 4, 6, 7, 8, 10, 12, 15, 17 })] // found at pow 1.28
    [InlineData(20, 3, new[] { 0, 3, 5, 7, 10, 13, 16 })]
    [InlineData(150, 10, new[] { 0, 9, 18, 26, 35, 43, 51, 60, 69, 79, 89, 101, 112, 124, 137 })]
    public void TheNonUniformScheduleIsDeepCachesQuadraticOne(int steps, int interval, int[] expected) =>
        Assert.Equal(expected, DeepCacheSchedule.NonUniformSteps(steps, interval));

    [Fact]
    public async Task ANonUniformScheduleRunsItsFullStepsOnly()
    {
        var result = await deepCache.Batch2.GenerateAsync(new GenerationRequest
            { Prompt = "a castle", Steps = 20, Seed = 5, Scheduler = "ddim", CacheInterval = 3, CacheSchedule = DeepCacheSchedule.NonUniform });
        Assert.Equal(20 - 7, result.ShallowUNetCalls);
        Assert.Equal(DeepCacheSchedule.NonUniform, result.CacheSchedule);
    }
}
