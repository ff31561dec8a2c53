using System.Security.Cryptography;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Schedulers;
using SdFunctions.Optimizer;

namespace SdFunctions.Inference.Tests;

/// <summary>sdf optimize: the bundle it writes, its manifest, and the runtime generating from it.</summary>
public class OptimizeTests
{
    private static async Task<(string Dir, OptimizeManifest Manifest)> Optimize(double ratio)
    {
        string output = Fixtures.TempDirectory("sdf-optimized");
        var manifest = await BundleOptimizer.OptimizeAsync(new OptimizeOptions { ModelDirectory = Fixtures.TinySd, OutputDirectory = output, TomeRatio = ratio });
        return (output, manifest);
    }

    private static Task<StableDiffusionPipeline> Load(string dir) =>
        StableDiffusionPipeline.LoadAsync(dir, new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions });

    [Fact]
    public async Task TheOptimizedBundleIsCompleteAndDescribedByItsManifest()
    {
        var (dir, manifest) = await Optimize(0.5);

        foreach (string f in new[] { "model_index.json", "tokenizer/vocab.json", "text_encoder/model.onnx", "vae_decoder/model.onnx",
                     "scheduler/scheduler_config.json", "unet/model.onnx", "unet/config.json", OptimizeManifest.FileName })
            Assert.True(File.Exists(Path.Combine(dir, f)), $"{f} is missing from the optimized bundle");
        Assert.Equal(await File.ReadAllBytesAsync(Path.Combine(Fixtures.TinySd, "vae_decoder", "model.onnx")),
            await File.ReadAllBytesAsync(Path.Combine(dir, "vae_decoder", "model.onnx")));

        string sourceHash = Convert.ToHexStringLower(SHA256.HashData(await File.ReadAllBytesAsync(Path.Combine(Fixtures.TinySd, "unet", "model.onnx"))));
        Assert.Equal(sourceHash, manifest.SourceUnetSha256["model.onnx"]);
        Assert.Equal(0.5, manifest.Options.TomeRatio);
        Assert.Equal((256, 256), (manifest.Options.Width, manifest.Options.Height));
        Assert.Equal(5, manifest.TokenMerging.Count);
        Assert.Equal(32, manifest.ZeroAttentionAddsRemoved); // attn1 and attn2 of each of the 16 transformer blocks
        Assert.All(manifest.TokenMerging, b => Assert.Equal((1024, 512), (b.Tokens, b.Merged)));
        Assert.Equal(2, manifest.StaticDims["batch_size"]);
        Assert.Equal(32, manifest.StaticDims["height"]);
        Assert.Equal(Directory.EnumerateFiles(Path.Combine(dir, "unet")).Sum(f => new FileInfo(f).Length), manifest.UnetBytesAfter);
        Assert.InRange(manifest.UnetWeightBytesAfter - manifest.UnetWeightBytesBefore, 1, 512 * 1024); // float weights kept, plus ToMe's index constants

        var bundle = ModelBundle.Open(dir);
        Assert.Equal(2, bundle.FixedUnetBatch);
        Assert.Equal([2L, 4L, 32L, 32L], bundle.Unet.FindInput("sample")!.Dims.Select(d => d.Value ?? -1));

        // Its profile, for the API side: what the bundle as written can do, equal to a fresh read of it.
        var profile = ModelProfile.Parse(await File.ReadAllBytesAsync(Path.Combine(dir, ModelProfile.FileName)), "test");
        Assert.Equal(ModelProfile.Read(bundle).ToJson(), profile.ToJson());
        Assert.Equal((2, true, 256, 256, 4), (profile.UNetBatch, profile.FixedUNetBatch, profile.Width, profile.Height, profile.LatentChannels));
        Assert.Equal(SchedulerCatalog.Names, profile.SchedulerNames);
    }

    [Fact]
    public async Task TheRuntimeGeneratesFromAToMeBundleWithAndWithoutGuidance()
    {
        var (dir, _) = await Optimize(0.4);
        using var pipeline = await Load(dir);
        Assert.Equal((256, 256), (pipeline.Width, pipeline.Height));

        var guided = await pipeline.GenerateAsync(new GenerationRequest { Prompt = "a red barn", Steps = 3, Seed = 1 });
        var unguided = await pipeline.GenerateAsync(new GenerationRequest { Prompt = "a red barn", Steps = 3, Seed = 1, GuidanceScale = 1 });
        Assert.NotEqual(guided.Rgb, unguided.Rgb);
        Assert.Equal("PNG", System.Text.Encoding.ASCII.GetString(await guided.ToPngAsync(), 1, 3));
        Assert.Equal("PNG", System.Text.Encoding.ASCII.GetString(await unguided.ToPngAsync(), 1, 3));

        // Batch-2 UNet without guidance: both halves carry the prompt, so it equals a batch-1 run of the original.
        using var original = await Load(Fixtures.TinySd);
        using var staticOnly = await Load((await Optimize(0)).Dir);
        var viaBatch1 = await original.GenerateAsync(new GenerationRequest { Prompt = "a red barn", Steps = 3, Seed = 1, GuidanceScale = 1 });
        var viaBatch2 = await staticOnly.GenerateAsync(new GenerationRequest { Prompt = "a red barn", Steps = 3, Seed = 1, GuidanceScale = 1 });
        Close.AllClose(viaBatch1.Latents, viaBatch2.Latents, 1e-4, "guidance off: static batch 2 vs batch 1");
    }

    [Fact]
    public async Task AStaticOnlyBundleReproducesTheDiffusersPipeline()
    {
        var (dir, manifest) = await Optimize(0);
        Assert.Empty(manifest.TokenMerging);
        Assert.Equal(manifest.UnetWeightBytesBefore, manifest.UnetWeightBytesAfter); // the same weights, moved to model.onnx_data
        using var pipeline = await Load(dir);
        var result = await pipeline.GenerateAsync(new GenerationRequest
        {
            Prompt = "a drawing of a green pokemon with red eyes", Steps = 10, Scheduler = "pndm",
            InitialLatents = Fixtures.Floats("pipeline", "pndm/initial_latents"),
        });
        Close.AllClose(Fixtures.Floats("pipeline", "pndm/final_latents"), result.Latents, 1e-3, "static-shape UNet, PNDM final latents");
    }

    [Fact]
    public async Task BadRequestsAreRefusedBeforeAnythingIsWritten()
    {
        string nonEmpty = Fixtures.TempDirectory("sdf-nonempty");
        Directory.CreateDirectory(nonEmpty);
        await File.WriteAllTextAsync(Path.Combine(nonEmpty, "keep.txt"), "x");
        await Assert.ThrowsAsync<IOException>(() => BundleOptimizer.OptimizeAsync(new OptimizeOptions { ModelDirectory = Fixtures.TinySd, OutputDirectory = nonEmpty }));

        string copy = Fixtures.CopyTinySd();
        await Assert.ThrowsAsync<IOException>(() => BundleOptimizer.OptimizeAsync(new OptimizeOptions { ModelDirectory = copy, OutputDirectory = Path.Combine(copy, "out") }));
        Assert.False(Directory.Exists(Path.Combine(copy, "out")));

        var e = await Assert.ThrowsAsync<ArgumentException>(() => BundleOptimizer.OptimizeAsync(new OptimizeOptions
            { ModelDirectory = Fixtures.TinySd, OutputDirectory = Fixtures.TempDirectory("x"), TomeRatio = 1.5 }));
        Assert.Contains("tome-ratio", e.Message);
        await Assert.ThrowsAsync<ArgumentException>(() => BundleOptimizer.OptimizeAsync(new OptimizeOptions
            { ModelDirectory = Fixtures.TinySd, OutputDirectory = Fixtures.TempDirectory("x"), Width = 300 }));
    }
}
