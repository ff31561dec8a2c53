using SdFunctions.Jobs;
using SdFunctions.Optimizer;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>"cacheInterval"/"cacheSchedule": DeepCache through the API, on a bundle cut by sdf optimize --deep-cache.</summary>
[Collection(AzuriteCollection.Name)]
public class DeepCacheServiceTests
{
    private static readonly Lazy<Task<string>> DeepCacheBundle = new(async () =>
    {
        // One fixed folder, replaced by each run, so runs leave no bundles behind.
        string dir = Path.Combine(Path.GetTempPath(), "sdf-functions-tests-deepcache");
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        await BundleOptimizer.OptimizeAsync(new OptimizeOptions { ModelDirectory = AzuriteFixture.TinySd, OutputDirectory = dir, DeepCache = true });
        return dir;
    });

    [Fact]
    public async Task ACachedJobRunsItsShallowCallsAndSaysSo()
    {
        await using var app = await TestApp.StartAsync(await DeepCacheBundle.Value);
        var cachedJob = await app.RunJobAsync("""{"prompt": "a fox", "steps": 10, "seed": 4, "scheduler": "ddim", "cacheInterval": 3}""");
        var plainJob = await app.RunJobAsync("""{"prompt": "a fox", "steps": 10, "seed": 4, "scheduler": "ddim"}""");
        Assert.Equal(("succeeded", "succeeded"), (cachedJob.GetProperty("status").GetString(), plainJob.GetProperty("status").GetString()));
        var output = cachedJob.GetProperty("output");
        Assert.Equal(3, output.GetProperty("cacheInterval").GetInt32());
        Assert.Equal("uniform", output.GetProperty("cacheSchedule").GetString());
        Assert.Equal(6, output.GetProperty("shallowUNetCalls").GetInt32()); // calls 1, 2, 4, 5, 7, 8 of 10
        Assert.False(plainJob.GetProperty("output").TryGetProperty("cacheInterval", out _));
        Assert.True((await app.HealthAsync()).GetProperty("deepCache").GetBoolean());

        var a = await app.ImageBytesAsync(cachedJob.GetProperty("id").GetString()!);
        var b = await app.ImageBytesAsync(plainJob.GetProperty("id").GetString()!);
        Assert.NotEqual(a, b);
    }

    [Fact]
    public async Task AModelWithoutDeepCacheGraphsRefusesACacheInterval()
    {
        await using var app = await TestApp.StartAsync();
        // Refused at submit from the model's profile, before this instance has loaded the model.
        Assert.False((await app.HealthAsync()).GetProperty("deepCache").GetBoolean());
        var (refused, _) = await app.SubmitAsync("""{"prompt": "a cat", "steps": 2, "cacheInterval": 2}""");
        Assert.Contains("--deep-cache", AssertProblem(refused, 400, ProblemTypes.Validation).GetProperty("errors").GetProperty("cacheInterval")[0].GetString());
        Assert.False(app.Pipelines.IsLoaded);
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);
    }

    [Theory]
    [InlineData("""{"prompt": "x", "cacheInterval": 0}""", "cacheInterval")]
    [InlineData("""{"prompt": "x", "cacheInterval": 21}""", "cacheInterval")]
    [InlineData("""{"prompt": "x", "cacheInterval": 3, "cacheSchedule": "sometimes"}""", "cacheSchedule")]
    public async Task CacheMistakesAre400s(string body, string field)
    {
        await using var app = await TestApp.StartAsync();
        AssertFieldRefused((await app.SubmitAsync(body)).Result, field);
    }
}
