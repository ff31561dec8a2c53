using System.Text.Json;
using Microsoft.AspNetCore.Mvc;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>/api/health tells a monitor when this instance cannot run jobs, and why, without showing paths or exception text.</summary>
[Collection(AzuriteCollection.Name)]
public class HealthTests
{
    private static async Task<(int Status, JsonElement Body)> HealthAsync(TestApp app)
    {
        var result = (ContentResult)await app.Health.Run(TestApp.Request("GET", "/api/health"));
        return (result.StatusCode ?? 200, Body(result));
    }

    [Fact]
    public async Task AHealthyInstanceSaysOkBeforeAndAfterItsModelLoads()
    {
        await using var app = await TestApp.StartAsync();
        var (status, body) = await HealthAsync(app);
        Assert.Equal((200, "ok", "ok", "notLoaded"), (status, body.GetProperty("status").GetString(),
            body.GetProperty("checks").GetProperty("queue").GetProperty("status").GetString(), body.GetProperty("checks").GetProperty("model").GetProperty("status").GetString()));
        await app.RunJobAsync("""{"prompt": "x", "steps": 1}""");
        (status, body) = await HealthAsync(app);
        Assert.Equal((200, "ok"), (status, body.GetProperty("checks").GetProperty("model").GetProperty("status").GetString()));
    }

    /// <summary>Defect: a bundle that cannot load left health ok while every job failed with a generic 500.</summary>
    [Fact]
    public async Task AModelThatFailsToLoadMakesHealthUnavailableAndItsJobsSaySo()
    {
        string bundle = TestApp.UnloadableModel;
        await using var app = await TestApp.StartAsync(bundle, s => s["Jobs:MaxDequeueCount"] = "1");
        var before = DateTimeOffset.UtcNow;
        var job = await app.RunJobAsync("""{"prompt": "x", "steps": 1}""");
        Assert.Equal("failed", job.GetProperty("status").GetString());
        var error = job.GetProperty("error");
        Assert.Equal((ProblemTypes.ServiceUnavailable, "Model unavailable", 503),
            (error.GetProperty("type").GetString(), error.GetProperty("title").GetString(), error.GetProperty("status").GetInt32()));
        Assert.Contains("not billed", error.GetProperty("detail").GetString());
        Assert.False(job.GetProperty("usage").GetProperty("billable").GetBoolean());

        var (status, body) = await HealthAsync(app);
        Assert.Equal((503, "unavailable"), (status, body.GetProperty("status").GetString()));
        var model = body.GetProperty("checks").GetProperty("model");
        Assert.Equal("failed", model.GetProperty("status").GetString());
        Assert.StartsWith("The model bundle is incomplete or unreadable", model.GetProperty("reason").GetString());
        Assert.InRange(model.GetProperty("since").GetDateTimeOffset(), before.AddSeconds(-1), DateTimeOffset.UtcNow);
        foreach (string secret in new[] { bundle, "unet", "Exception" })
        {
            Assert.DoesNotContain(secret, body.GetRawText());
            Assert.DoesNotContain(secret, job.GetRawText());
        }
    }

    [Fact]
    public async Task AMissingQueueOrUnreachableStorageIsUnavailable()
    {
        await using (var app = await TestApp.StartAsync())
        {
            await app.Messages.DeleteAsync();
            var (status, body) = await HealthAsync(app);
            var queue = body.GetProperty("checks").GetProperty("queue");
            Assert.Equal((503, "unavailable"), (status, queue.GetProperty("status").GetString()));
            Assert.Contains("does not exist on the JobsStorage account", queue.GetProperty("reason").GetString());
        }
        var unreachable = new TestApp(configure: s => { s["JobsStorage"] = OutageTests.Unreachable; s["Jobs:StorageMaxRetries"] = "0"; });
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var (down, answer) = await HealthAsync(unreachable);
        Assert.Equal(503, down);
        Assert.Contains("does not answer", answer.GetProperty("checks").GetProperty("queue").GetProperty("reason").GetString());
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(15), $"health took {watch.Elapsed.TotalSeconds:F0} s");
        await unreachable.Services.DisposeAsync();
    }
}
