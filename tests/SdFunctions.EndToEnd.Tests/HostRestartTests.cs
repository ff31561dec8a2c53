using System.Text.Json;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;

namespace SdFunctions.EndToEnd.Tests;

/// <summary>
/// An instance that stops mid-generation, politely (SIGTERM: a scale-in, a deployment) or not (SIGKILL: a crash, an
/// out-of-memory kill), and comes back. The host keeps the interrupted message invisible for minutes either way; the job
/// finishes soon after the restart as attempt 2 with one image: through the message the stopping run sent, or the sweep
/// the restarted host runs at startup (the dead run's heartbeat is stale by then). A host of its own: the interrupted
/// messages it leaves invisible would upset the other cases' empty-queue checks.
/// </summary>
[Collection(HostCollection.Name), Trait("Category", "EndToEnd")]
public class HostRestartTests(FunctionsHostFixture host, Xunit.Abstractions.ITestOutputHelper output) : HostClient(host), IClassFixture<FunctionsHostFixture>
{
    private readonly FunctionsHostFixture host = host;

    [Fact]
    public Task AJobInterruptedBySigtermFinishesAfterTheRestartWithOneImage() => InterruptAndRestartAsync(host.StopHostAsync, steps: 150);

    [Fact]
    public Task AJobWhoseInstanceWasKilledFinishesAfterTheRestartWithOneImage() => InterruptAndRestartAsync(host.KillHostAsync, steps: 20);

    /// <param name="steps">At 0.1–0.3 s a step here (60 steps once finished inside the timeout): for SIGTERM more than the host's 10 s ProcessShutdownTimeout, so the run
    /// cannot simply finish while the host stops.</param>
    private async Task InterruptAndRestartAsync(Func<Task> stop, int steps)
    {
        string id = await SubmitIdAsync($$"""{"prompt": "x", "steps": {{steps}}, "seed": 2, "scheduler": "ddim"}""");
        await WaitAsync(id, j => Status(j) == "running" && j.GetProperty("progress").GetProperty("step").GetInt32() > 0);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            await stop();
            var jobs = new BlobServiceClient(host.StorageConnectionString).GetBlobContainerClient("jobs");
            var record = JsonDocument.Parse((await jobs.GetBlobClient($"jobs/{id}.json").DownloadContentAsync()).Value.Content.ToString()).RootElement;
            output.WriteLine($"after the stop: {record.GetProperty("status").GetString()}, attempt {record.GetProperty("attempt").GetInt32()}");
            Assert.Contains(record.GetProperty("status").GetString(), new[] { "queued", "running" }); // given back, or left as it was
            Assert.Equal(1, record.GetProperty("attempt").GetInt32());
        }
        finally
        {
            await host.StartHostAsync(); // the next case needs the host
        }
        var done = await WaitAsync(id, Finished, seconds: 150);
        Assert.Equal(("succeeded", 2), (Status(done), done.GetProperty("attempt").GetInt32()));
        var images = new BlobServiceClient(host.StorageConnectionString).GetBlobContainerClient("images");
        var names = new List<string>();
        await foreach (var blob in images.GetBlobsAsync(BlobTraits.None, BlobStates.None, id, default)) names.Add(blob.Name);
        Assert.Equal([$"{id}.png"], names);
        output.WriteLine($"stop, restart and the second attempt took {watch.Elapsed.TotalSeconds:F1} s");
    }
}
