using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Optimizer;
using SdFunctions.Optimizer.Quantization;
using Xunit.Abstractions;

namespace SdFunctions.Inference.Tests;

/// <summary>sdf optimize for the few-step path: batch-1 UNets, LCM UNets (timestep_cond kept and calibrated), TAESD carried along.</summary>
public class FewStepOptimizeTests(ITestOutputHelper output)
{
    private static PipelineOptions Options => new() { WarmUp = false, Session = TinyPipelineFixture.CachedSessions };

    /// <summary>A float batch-1 UNet is the same network: guided requests (two calls a step) match the dynamic-batch pipeline.</summary>
    [Fact]
    public async Task ABatchOneUNetServesGuidedAndUnguidedRequests()
    {
        string dir = Fixtures.TempDirectory("sdf-batch1");
        var manifest = await BundleOptimizer.OptimizeAsync(new OptimizeOptions { ModelDirectory = Fixtures.TinySd, OutputDirectory = dir, Batch = 1 });
        Assert.Equal(1, manifest.Options.Batch);
        Assert.Equal(1, ModelBundle.Open(dir).FixedUnetBatch);

        using var reference = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, Options);
        using var batchOne = await StableDiffusionPipeline.LoadAsync(dir, Options);
        Assert.Equal(1, batchOne.DefaultUNetBatch);
        foreach (double guidance in new[] { 7.5, 1.0 })
        {
            var request = new GenerationRequest { Prompt = "a castle on a hill", NegativePrompt = "fog", Steps = 4, Seed = 11, Scheduler = "ddim", GuidanceScale = guidance };
            var expected = await reference.GenerateAsync(request);
            var actual = await batchOne.GenerateAsync(request);
            Assert.Equal(1, actual.UNetBatch);
            Assert.Equal(guidance > 1 ? 8 : 4, actual.UNetCalls);
            Close.RelClose(expected.Latents, actual.Latents, 1e-4, $"guidance {guidance}: batch 1 vs the dynamic UNet");
        }
    }

    /// <summary>The production recipe on an LCM UNet: ToMe 0.4, INT8 mixed, fused attention, compiled; batch 1 by default.</summary>
    [Fact]
    public async Task AnInt8ToMeLcmBundleKeepsTimestepCondAndGeneratesCloseToFloat()
    {
        string dir = Fixtures.TempDirectory("sdf-lcm-int8");
        var manifest = await BundleOptimizer.OptimizeAsync(new OptimizeOptions
        {
            ModelDirectory = Fixtures.TinyLcm, OutputDirectory = dir, TomeRatio = 0.4, FuseAttention = true, Compile = true,
            Quantization = new QuantizationOptions(), CalibrationSteps = 4,
        });
        Assert.Equal(1, manifest.Options.Batch);
        Assert.Equal(4, manifest.Quantization!.CalibrationInputs / manifest.Quantization.CalibrationPrompts); // one batch-1 call per LCM step
        Assert.True(manifest.Quantization.IntegerKernels.GetValueOrDefault("QLinearConv") > 0);
        Assert.Equal(5, manifest.TokenMerging.Count);
        var bundle = ModelBundle.Open(dir);
        Assert.Equal([1L, 256L], bundle.Unet.FindInput(ModelBundle.UNetTimestepCond)!.Dims.Select(d => d.Value ?? -1));
        Assert.Contains(manifest.Compiled!.Entries, e => e.StartsWith("unet-", StringComparison.Ordinal));

        using var reference = await StableDiffusionPipeline.LoadAsync(Fixtures.TinyLcm, Options);
        using var optimized = await StableDiffusionPipeline.LoadAsync(dir, Options);
        var request = new GenerationRequest { Prompt = "a drawing of a green pokemon with red eyes", Seed = 5 };
        var expected = await reference.GenerateAsync(request);
        var actual = await optimized.GenerateAsync(request);
        Assert.Equal(("guidance-embedding", 1, 4), (actual.Conditioning, actual.UNetBatch, actual.UNetCalls));
        double psnr = Close.Psnr(expected.Rgb, actual.Rgb), error = Close.RelativeL2(expected.Latents, actual.Latents);
        output.WriteLine($"tiny-lcm INT8 + ToMe 0.4 + fused attention vs float, 4 LCM steps, seed 5: PSNR {psnr:F1} dB, final latents rel L2 {error:E2}");
        Assert.True(psnr >= 30, $"PSNR {psnr:F1} dB < 30 dB");
        Assert.InRange(error, 1e-4, 0.15); // quantized for real, and still close
    }

    [Fact]
    public async Task TheTinyDecoderTravelsWithTheBundleAndIsCompiled()
    {
        string dir = Fixtures.TempDirectory("sdf-taesd-opt");
        var manifest = await BundleOptimizer.OptimizeAsync(new OptimizeOptions { ModelDirectory = Fixtures.TinySdWithTaesd, OutputDirectory = dir, Compile = true });
        Assert.Equal(await File.ReadAllBytesAsync(Path.Combine(Fixtures.TinySdWithTaesd, "taesd_decoder", "model.onnx")),
            await File.ReadAllBytesAsync(Path.Combine(dir, "taesd_decoder", "model.onnx")));
        Assert.Contains(manifest.Compiled!.Entries, e => e.StartsWith("taesd_decoder-", StringComparison.Ordinal));
        Assert.Contains(manifest.Compiled.Entries, e => e.StartsWith("vae_decoder-", StringComparison.Ordinal));

        using var pipeline = await StableDiffusionPipeline.LoadAsync(dir, new PipelineOptions { WarmUp = false, DefaultDecoder = "tiny" });
        Assert.Contains(pipeline.Sessions, s => s.Component == "taesd_decoder" && s.FromCache); // from the bundle's compiled/ folder
        var result = await pipeline.GenerateAsync(new GenerationRequest { Prompt = "a castle", Steps = 2, Seed = 1 });
        Assert.Equal("tiny", result.Decoder);
    }
}
