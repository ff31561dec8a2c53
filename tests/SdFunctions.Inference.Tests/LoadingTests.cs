using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Tests;

/// <summary>Loading: the optimized-graph cache, the load-once holder, and sizes.</summary>
public class LoadingTests
{
    [Fact]
    public async Task OptimizedGraphCacheIsWrittenThenUsedWithIdenticalResults()
    {
        string cache = Fixtures.TempDirectory("sdf-cache");
        var options = new PipelineOptions { WarmUp = false, Session = new SessionSettings { OptimizedModelCacheDirectory = cache } };
        var request = new GenerationRequest { Prompt = "a red barn", Steps = 3, Seed = 11 };
        try
        {
            GenerationResult first, second;
            using (var cold = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, options))
            {
                Assert.All(cold.Sessions, s => Assert.False(s.FromCache));
                first = await cold.GenerateAsync(request);
            }
            Assert.Equal(3, Directory.GetDirectories(cache).Length); // text_encoder, unet, vae_decoder
            Assert.All(Directory.GetDirectories(cache), d => Assert.True(File.Exists(Path.Combine(d, "model.onnx"))));

            using (var warm = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, options))
            {
                Assert.All(warm.Sessions, s => Assert.True(s.FromCache, $"{s.Component} was not loaded from the cache"));
                second = await warm.GenerateAsync(request);
            }
            Close.AllClose(first.Latents, second.Latents, 1e-5, "latents cached vs uncached graph");
        }
        finally { Directory.Delete(cache, recursive: true); }
    }

    [Fact]
    public async Task GraphsCompiledIntoABundleServeItsFirstLoadWhereverItIsCopied()
    {
        string built = Fixtures.TempDirectory("sdf-compiled");
        var manifest = await SdFunctions.Optimizer.BundleOptimizer.OptimizeAsync(new SdFunctions.Optimizer.OptimizeOptions
            { ModelDirectory = Fixtures.TinySd, OutputDirectory = built, Compile = true });
        Assert.Equal(3, manifest.Compiled!.Entries.Count);
        Assert.Equal(OnnxSessionFactory.OrtVersion, manifest.Compiled.OrtVersion);

        // A copy elsewhere (new path, new file times), as on Azure Files or after a blob download: the keys still match.
        string copy = Fixtures.TempDirectory("sdf-compiled-copy");
        foreach (string file in Directory.EnumerateFiles(built, "*", SearchOption.AllDirectories))
        {
            string target = Path.Combine(copy, Path.GetRelativePath(built, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
        var options = new PipelineOptions { WarmUp = false, Session = new SessionSettings() }; // production defaults, no cache folder
        using (var pipeline = await StableDiffusionPipeline.LoadAsync(copy, options))
        {
            Assert.All(pipeline.Sessions, s => Assert.True(s.FromCache && s.LoadedFrom.StartsWith(Path.Combine(copy, "compiled")), $"{s.Component} came from {s.LoadedFrom}"));
            var result = await pipeline.GenerateAsync(new GenerationRequest { Prompt = "a red barn", Steps = 3, Seed = 1 });
            using var reference = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions });
            Close.AllClose((await reference.GenerateAsync(new GenerationRequest { Prompt = "a red barn", Steps = 3, Seed = 1 })).Latents, result.Latents, 1e-4,
                "compiled graphs vs the source bundle");
        }

        // Other settings make other keys: the compiled graphs are not used (nor touched).
        using (var other = await StableDiffusionPipeline.LoadAsync(copy, new PipelineOptions { WarmUp = false, Session = new SessionSettings { DisabledOptimizers = ["ConstantFolding"] } }))
            Assert.All(other.Sessions, s => Assert.False(s.FromCache));

        // A broken compiled graph is skipped, not deleted (the bundle may be read-only); the source model loads instead.
        string unetEntry = Directory.GetDirectories(Path.Combine(copy, "compiled")).Single(d => Path.GetFileName(d).StartsWith("unet-", StringComparison.Ordinal));
        await File.WriteAllTextAsync(Path.Combine(unetEntry, "model.onnx"), "not a model");
        using (var fallback = await StableDiffusionPipeline.LoadAsync(copy, options))
            Assert.False(fallback.Sessions.Single(s => s.Component == "unet").FromCache);
        Assert.True(File.Exists(Path.Combine(unetEntry, "model.onnx")));
    }

    [Fact]
    public async Task ACorruptCacheEntryIsRebuilt()
    {
        string cache = Fixtures.TempDirectory("sdf-cache");
        var options = new PipelineOptions { WarmUp = false, Session = new SessionSettings { OptimizedModelCacheDirectory = cache } };
        try
        {
            using (await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, options)) { }
            string entry = Directory.GetDirectories(cache).Single(d => Path.GetFileName(d).StartsWith("vae_decoder", StringComparison.Ordinal));
            await File.WriteAllTextAsync(Path.Combine(entry, "model.onnx"), "not a model");

            using var again = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, options);
            Assert.False(again.Sessions.Single(s => s.Component == "vae_decoder").FromCache);
            Assert.True(new FileInfo(Path.Combine(entry, "model.onnx")).Length > 1000);
        }
        finally { Directory.Delete(cache, recursive: true); }
    }

    [Fact]
    public async Task HolderLoadsOnceForConcurrentCallers()
    {
        int loads = 0;
        using var holder = new PipelineHolder(async ct =>
        {
            Interlocked.Increment(ref loads);
            return await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions }, cancellationToken: ct);
        });
        Assert.False(holder.IsLoaded);
        var all = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => holder.GetAsync()));
        Assert.Equal(1, loads);
        Assert.All(all, p => Assert.Same(all[0], p));
        Assert.True(holder.IsLoaded);
        Assert.Same(all[0], await holder.GetAsync());
    }

    [Fact]
    public async Task HolderRetriesAFailedLoad()
    {
        string dir = Fixtures.CopyTinySd();
        string vocab = Path.Combine(dir, "tokenizer", "vocab.json");
        File.Move(vocab, vocab + ".away");
        using var holder = new PipelineHolder(ct => StableDiffusionPipeline.LoadAsync(dir,
            new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions }, cancellationToken: ct));

        await Assert.ThrowsAsync<ModelBundleException>(() => holder.GetAsync());
        Assert.False(holder.IsLoaded);

        File.Move(vocab + ".away", vocab); // the operator fixes the bundle; the next call loads
        var pipeline = await holder.GetAsync();
        Assert.True(holder.IsLoaded);
        Assert.Equal(2, holder.LoadAttempts);
        Assert.Equal(256, pipeline.Width);
    }

    [Fact]
    public async Task AWaitersCancellationDoesNotCancelTheSharedLoad()
    {
        var gate = new TaskCompletionSource();
        using var holder = new PipelineHolder(async ct =>
        {
            await gate.Task;
            return await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions }, cancellationToken: ct);
        });
        using var cts = new CancellationTokenSource();
        var impatient = holder.GetAsync(cts.Token);
        var patient = holder.GetAsync();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => impatient);
        gate.SetResult();
        Assert.NotNull(await patient);
        Assert.Equal(1, holder.LoadAttempts);
    }

    [Fact]
    public async Task NonSquareCompiledSizeWorks()
    {
        using var pipeline = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd,
            new PipelineOptions { Width = 320, Height = 192, WarmUp = false, Session = TinyPipelineFixture.CachedSessions });
        var result = await pipeline.GenerateAsync(new GenerationRequest { Prompt = "wide", Steps = 2, Seed = 1, Width = 320, Height = 192 });
        Assert.Equal((320, 192), (result.Width, result.Height));
        Assert.Equal(320 * 192 * 3, result.Rgb.Length);
        Assert.Equal(4 * 24 * 40, result.Latents.Length);
    }

    [Theory]
    [InlineData(250, 256)]
    [InlineData(256, 0)]
    public async Task SizesTheUNetCannotTakeAreRejected(int width, int height)
    {
        var e = await Assert.ThrowsAsync<InvalidGenerationRequestException>(() => StableDiffusionPipeline.LoadAsync(Fixtures.TinySd,
            new PipelineOptions { Width = width, Height = height, WarmUp = false }));
        Assert.Contains("multiples of 64", e.Message);
    }
}
