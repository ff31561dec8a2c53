using System.Text.Json;

namespace SdFunctions.Functions.Tests;

/// <summary>What the Functions host will read from the build output: every function with its trigger, route, methods, auth and queue.</summary>
public class MetadataTests
{
    private static readonly Dictionary<string, JsonElement> Functions = Load();

    private static Dictionary<string, JsonElement> Load()
    {
        // The test binaries sit in tests/…/bin/<Configuration>/<tfm>; the app's output mirrors that layout.
        var testDir = new DirectoryInfo(AppContext.BaseDirectory);
        string tfm = testDir.Name, configuration = testDir.Parent!.Name;
        string path = Path.Combine(AzuriteFixture.RepoRoot(), "functions", "SdFunctions.Functions", "bin", configuration, tfm, "functions.metadata");
        var all = JsonDocument.Parse(File.ReadAllText(path)).RootElement;
        return all.EnumerateArray().ToDictionary(f => f.GetProperty("name").GetString()!, f => f);
    }

    private static JsonElement Trigger(string function) =>
        Functions[function].GetProperty("bindings").EnumerateArray().Single(b => b.GetProperty("type").GetString()!.EndsWith("Trigger", StringComparison.Ordinal));

    [Theory]
    [InlineData("SubmitGeneration", "post", "generations", "Function")]
    [InlineData("GetGeneration", "get", "generations/{id}", "Function")]
    [InlineData("GetGenerationImage", "get", "generations/{id}/image", "Function")]
    [InlineData("CancelGeneration", "post", "generations/{id}/cancel", "Function")]
    [InlineData("Health", "get", "health", "Anonymous")]
    [InlineData("OpenApiDocument", "get", "openapi.json", "Anonymous")]
    [InlineData("Playground", "get", "playground", "Anonymous")]
    [InlineData("PlaygroundAsset", "get", "playground/{file}", "Anonymous")]
    public void HttpFunctionsHaveTheirRouteMethodAndAuthLevel(string name, string method, string route, string auth)
    {
        var trigger = Trigger(name);
        Assert.Equal("httpTrigger", trigger.GetProperty("type").GetString());
        Assert.Equal(route, trigger.GetProperty("route").GetString());
        Assert.Equal([method], trigger.GetProperty("methods").EnumerateArray().Select(m => m.GetString()));
        Assert.Equal(auth, trigger.GetProperty("authLevel").GetString());
    }

    [Theory]
    [InlineData("ProcessGeneration", "generations")]
    [InlineData("FailPoisonedGeneration", "generations-poison")]
    [InlineData("DeliverWebhook", "webhooks")]
    public void QueueFunctionsListenOnTheirQueues(string name, string queue)
    {
        var trigger = Trigger(name);
        Assert.Equal("queueTrigger", trigger.GetProperty("type").GetString());
        Assert.Equal(queue, trigger.GetProperty("queueName").GetString());
        Assert.Equal("JobsStorage", trigger.GetProperty("connection").GetString());
    }

    [Fact]
    public void TheGenerationTriggerBindsTheSdksQueueMessage() =>
        // Deferred binding hands the worker a QueueMessage, whose DequeueCount tells the attempt (no binding-data lookup).
        Assert.Equal("True", Trigger("ProcessGeneration").GetProperty("properties").GetProperty("supportsDeferredBinding").GetString());

    [Fact]
    public void TheSweepRunsEveryMinuteAndOnStartup()
    {
        var trigger = Trigger("RequeueInterruptedJobs");
        Assert.Equal("timerTrigger", trigger.GetProperty("type").GetString());
        Assert.Equal("0 */1 * * * *", trigger.GetProperty("schedule").GetString());
        Assert.True(trigger.GetProperty("runOnStartup").GetBoolean());
    }

    [Fact]
    public void ThereAreExactlyTheseTwelveFunctions() =>
        Assert.Equal(["CancelGeneration", "DeliverWebhook", "FailPoisonedGeneration", "GetGeneration", "GetGenerationImage", "Health", "OpenApiDocument",
            "Playground", "PlaygroundAsset", "ProcessGeneration", "RequeueInterruptedJobs", "SubmitGeneration"], Functions.Keys.Order());

    [Fact]
    public void HostJsonIsInTheOutputAndRunsOneMessageAtATime()
    {
        string path = Path.Combine(AzuriteFixture.RepoRoot(), "host.json");
        var queues = JsonDocument.Parse(File.ReadAllText(path)).RootElement.GetProperty("extensions").GetProperty("queues");
        Assert.Equal(1, queues.GetProperty("batchSize").GetInt32());
        Assert.Equal(0, queues.GetProperty("newBatchThreshold").GetInt32());
        Assert.Equal(new SdFunctions.Jobs.JobsOptions().MaxDequeueCount, queues.GetProperty("maxDequeueCount").GetInt32());
        Assert.Equal("base64", queues.GetProperty("messageEncoding").GetString());
    }
}
