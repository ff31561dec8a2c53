using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Tests;

/// <summary>
/// One tiny-bundle pipeline shared by the tests that only run it, with the production session settings, and
/// one optimized-graph cache for the test run. Tests that only need correct numbers use
/// <see cref="CachedSessions"/>: constant folding off (exact either way) keeps each cached UNet at 5 MB instead of
/// 400 MB and its first creation at ~1 s instead of ~6 s.
/// </summary>
public sealed class TinyPipelineFixture : IAsyncLifetime
{
    public static readonly string SharedCache = Fixtures.TempDirectory("sdf-test-cache");
    public static SessionSettings CachedSessions => new() { OptimizedModelCacheDirectory = SharedCache, DisabledOptimizers = ["ConstantFolding"] };

    public StableDiffusionPipeline Pipeline { get; private set; } = null!;

    public async Task InitializeAsync() =>
        Pipeline = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd,
            new PipelineOptions { WarmUp = false, Session = new SessionSettings { OptimizedModelCacheDirectory = SharedCache } });

    public Task DisposeAsync()
    {
        Pipeline.Dispose();
        return Task.CompletedTask;
    }
}

[CollectionDefinition(Name)]
public sealed class TinyPipelineCollection : ICollectionFixture<TinyPipelineFixture>
{
    public const string Name = "tiny pipeline";
}
