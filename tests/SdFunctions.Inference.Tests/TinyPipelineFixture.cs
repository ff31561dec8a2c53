using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Tests;

/// <summary>
/// One tiny-bundle pipeline shared by the tests that only run it, and one optimized-graph cache for the
/// test run: ORT's graph optimization of the UNet takes seconds even for the tiny model, the cache makes
/// every later session of the same shape load in a fraction of that.
/// </summary>
public sealed class TinyPipelineFixture : IAsyncLifetime
{
    public static readonly string SharedCache = Path.Combine(Path.GetTempPath(), $"sdf-test-cache-{Environment.ProcessId}");
    public static SessionSettings CachedSessions => new() { OptimizedModelCacheDirectory = SharedCache };

    public StableDiffusionPipeline Pipeline { get; private set; } = null!;

    public async Task InitializeAsync() =>
        Pipeline = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, new PipelineOptions { WarmUp = false, Session = CachedSessions });

    public Task DisposeAsync()
    {
        Pipeline.Dispose();
        return Task.CompletedTask;
    }

    static TinyPipelineFixture() => AppDomain.CurrentDomain.ProcessExit += (_, _) =>
    {
        try { Directory.Delete(SharedCache, recursive: true); } catch (IOException) { }
    };
}

[CollectionDefinition(Name)]
public sealed class TinyPipelineCollection : ICollectionFixture<TinyPipelineFixture>
{
    public const string Name = "tiny pipeline";
}
