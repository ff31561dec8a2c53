using Microsoft.AspNetCore.Mvc;
using Microsoft.Extensions.DependencyInjection;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// Storage that goes away, or stops answering, while the service works: through <see cref="FaultProxy"/> in front of
/// Azurite, with the real pipeline. Clients get 503 problems with Retry-After; a run outlives an outage; nothing is lost.
/// </summary>
[Collection(AzuriteCollection.Name)]
public class OutageTests(Xunit.Abstractions.ITestOutputHelper output)
{
    // Nothing listens on port 1; the SAS is a dummy (the connection is refused before it matters).
    internal const string Unreachable =
        "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;QueueEndpoint=http://127.0.0.1:1/devstoreaccount1;SharedAccessSignature=sv=2021-08-06&sig=dummy";

    /// <summary>How the SDK reports storage it cannot reach, each seen in these tests, and what it must not swallow.</summary>
    [Fact]
    public void OutagesAreRecognizedHoweverTheSdkReportsThem()
    {
        var notConnected = new System.Net.Sockets.SocketException(107); // bare, from a connection being set up
        Assert.True(StorageErrors.IsOutage(notConnected));
        Assert.True(StorageErrors.IsOutage(new IOException("Unable to read data from the transport connection")));
        Assert.True(StorageErrors.IsOutage(new AggregateException(new TaskCanceledException(), new Azure.RequestFailedException(503, "busy"))));
        Assert.False(StorageErrors.IsOutage(new OperationCanceledException())); // the caller's own cancellation
        Assert.False(StorageErrors.IsOutage(new AggregateException(new InvalidOperationException())));
        Assert.False(StorageErrors.IsOutage(new AggregateException()));
    }

    [Fact]
    public async Task AStorageOutageIsA503ProblemWithRetryAfter()
    {
        var app = new TestApp(configure: s => { s["JobsStorage"] = Unreachable; s["Jobs:StorageMaxRetries"] = "1"; s["Jobs:StorageRetryDelay"] = "00:00:00.050"; });
        var req = TestApp.Request("GET", "/api/generations/" + JobIds.New());
        var result = (ContentResult)await app.Api.Get(req, req.Path.Value!.Split('/')[^1], default);
        AssertProblem(result, 503, ProblemTypes.ServiceUnavailable);
        Assert.Equal(HttpResults.RetryAfterOutageSeconds, req.HttpContext.Response.Headers.RetryAfter.ToString());
        await app.Services.DisposeAsync();
    }

    /// <summary>Defect: the progress monitor died on the SDK's AggregateException and the finished generation counted as failed.</summary>
    [Fact]
    public async Task ABlobOutageDuringARunKeepsTheFinishedImage()
    {
        await using var storage = new FaultyStorage();
        await using var app = await TestApp.StartAsync(configure: storage.Configure);
        var (id, worker) = await RunThroughABlobOutageAsync(app, storage);
        int seenAfter = await app.WaitForProgressAsync(id, above: StepOf(await app.JobAsync(id)));
        output.WriteLine($"progress resumed at step {seenAfter} after a 0.6 s blob outage");

        await worker; // does not throw
        var done = await app.JobAsync(id);
        Assert.Equal("succeeded", done.GetProperty("status").GetString());
        Assert.Equal(1, done.GetProperty("attempt").GetInt32());
        Assert.True(await app.Images.GetBlobClient($"{id}.png").ExistsAsync());
    }

    /// <summary>Defect: while the monitor was dead a cancel went unseen and the job ran to the end.</summary>
    [Fact]
    public async Task ACancelAfterAnOutageStillStopsTheRun()
    {
        await using var storage = new FaultyStorage();
        await using var app = await TestApp.StartAsync(configure: storage.Configure);
        // 150 steps: 40 once ran to the end (outage and cancel included) on a fast run in CI.
        var (id, worker) = await RunThroughABlobOutageAsync(app, storage, steps: 150);
        Assert.Equal(202, (await app.CancelAsync(id)).StatusCode);
        await worker;

        var job = await app.JobAsync(id);
        Assert.Equal("canceled", job.GetProperty("status").GetString());
        Assert.True(StepOf(job) < 150, "the run stopped before its last step");
        Assert.False(await app.Images.GetBlobClient($"{id}.png").ExistsAsync());
    }

    /// <summary>Defect: an SDK timeout (AggregateException of TaskCanceledException) was a bare 500 that left a never-queued record.</summary>
    [Fact]
    public async Task AQueueThatTimesOutAtSubmitIsA503AndLeavesNothing()
    {
        await using var storage = new FaultyStorage();
        await using var app = await TestApp.StartAsync(configure: storage.Configure);
        storage.Queues.Current = FaultProxy.Mode.Hang;
        var (result, response) = await app.SubmitAsync("""{"prompt": "x", "steps": 2}""", new Dictionary<string, string> { ["Idempotency-Key"] = "timeout-1" });
        AssertProblem(result, 503, ProblemTypes.ServiceUnavailable);
        Assert.Equal(HttpResults.RetryAfterOutageSeconds, response.Headers.RetryAfter.ToString());
        storage.Queues.Current = FaultProxy.Mode.Up;

        Assert.Empty(await ListAsync(app, "jobs/"));
        Assert.Empty(await ListAsync(app, "pending/"));
        Assert.Empty(await ListAsync(app, "idempotency/")); // released: the retry makes the job afresh
        var (retried, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 2}""", new Dictionary<string, string> { ["Idempotency-Key"] = "timeout-1" });
        Assert.Equal(202, retried.StatusCode);
        Assert.NotNull((await app.Messages.PeekMessageAsync()).Value);
    }

    [Fact]
    public async Task ReadsAndCancelsThatTimeOutAre503Problems()
    {
        await using var storage = new FaultyStorage();
        await using var app = await TestApp.StartAsync(configure: storage.Configure);
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 2}""");
        string id = IdOf(submitted);
        storage.Blobs.Current = FaultProxy.Mode.Hang;
        AssertProblem(await app.GetAsync(id), 503, ProblemTypes.ServiceUnavailable);
        AssertProblem(await app.CancelAsync(id), 503, ProblemTypes.ServiceUnavailable);
        var image = (ContentResult)await app.Api.GetImage(TestApp.Request("GET", $"/api/generations/{id}/image"), id, default);
        AssertProblem(image, 503, ProblemTypes.ServiceUnavailable);
        storage.Blobs.Current = FaultProxy.Mode.Up;
        Assert.Equal("queued", (await app.JobAsync(id)).GetProperty("status").GetString());
    }

    /// <summary>
    /// Defect: with a black-holed store a GET waited for the SDK's retries (3 × 30 s) before its 503, past the 100 s after which
    /// .NET's HttpClient gives up. The HTTP path spends at most Jobs:HttpTimeBudget on storage.
    /// </summary>
    [Fact]
    public async Task ABlackHoledStoreAnswers503WithinTheHttpTimeBudget()
    {
        await using var storage = new FaultyStorage();
        await using var app = await TestApp.StartAsync(configure: s =>
        {
            storage.Configure(s);
            s["Jobs:StorageNetworkTimeout"] = "00:00:30"; // as in production: each try waits 30 s
            s["Jobs:StorageMaxRetries"] = "3";
            s["Jobs:HttpTimeBudget"] = "00:00:02";
        });
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 2}""");
        string id = IdOf(submitted);
        storage.Blobs.Current = FaultProxy.Mode.Hang;
        storage.Queues.Current = FaultProxy.Mode.Hang;
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var problem = AssertProblem(await app.GetAsync(id), 503, ProblemTypes.ServiceUnavailable);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(6), $"the 503 took {watch.Elapsed.TotalSeconds:F1} s");
        Assert.Contains("within 2 s", problem.GetProperty("detail").GetString());
        watch.Restart();
        AssertProblem((await app.SubmitAsync("""{"prompt": "y"}""")).Result, 503, ProblemTypes.ServiceUnavailable);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(6), $"the submit's 503 took {watch.Elapsed.TotalSeconds:F1} s");
        storage.Blobs.Current = FaultProxy.Mode.Up;
        storage.Queues.Current = FaultProxy.Mode.Up;
        Assert.Equal("queued", (await app.JobAsync(id)).GetProperty("status").GetString());
    }

    /// <summary>
    /// Defect: an outage over the end of a run made the upload fail after the SDK's retries; the run failed, the release failed
    /// too, and the job was rerun from scratch (or failed: "run stopped 3 times"). The finished image is kept and its upload and
    /// record retried through the outage (Jobs:PublishRetryWindow): nothing is lost, nothing reruns.
    /// </summary>
    [Fact]
    public async Task AnOutageOverTheEndOfARunKeepsTheFinishedImageAndRerunsNothing()
    {
        await using var storage = new FaultyStorage();
        await using var app = await TestApp.StartAsync(configure: s =>
        {
            storage.Configure(s);
            s["Jobs:OwnerTimeout"] = "00:01:00";
            s["Jobs:PublishRetryWindow"] = "00:01:00";
        });
        var (id, worker) = await app.StartLongJobAsync(); // 150 steps: a few seconds, well inside the outage
        storage.Blobs.Current = FaultProxy.Mode.Refuse; // over the last steps, the upload and the record
        var outage = System.Diagnostics.Stopwatch.StartNew();
        while (!worker.IsCompleted && outage.Elapsed < TimeSpan.FromSeconds(25)) await Task.Delay(100);
        Assert.False(worker.IsCompleted, "the run ended during the outage instead of waiting it out");
        storage.Blobs.Current = FaultProxy.Mode.Up;
        await worker; // the run itself succeeds: no exception, so the host would not redeliver

        var done = await app.JobAsync(id);
        Assert.Equal(("succeeded", 1), (done.GetProperty("status").GetString(), done.GetProperty("attempt").GetInt32()));
        Assert.True(await app.Images.GetBlobClient($"{id}.png").ExistsAsync());
        Assert.Null((await app.Messages.PeekMessageAsync()).Value); // no rerun queued
        output.WriteLine($"published {done.GetProperty("output").GetProperty("timings").GetProperty("totalSeconds").GetDouble():F1} s after the run began, through a 25 s outage");
    }

    [Fact]
    public async Task AnOutageLongerThanThePublishWindowStillRetriesTheJob()
    {
        await using var storage = new FaultyStorage();
        await using var app = await TestApp.StartAsync(configure: s => { storage.Configure(s); s["Jobs:PublishRetryWindow"] = "00:00:02"; });
        var (id, worker) = await app.StartLongJobAsync();
        storage.Blobs.Current = FaultProxy.Mode.Refuse;
        await Assert.ThrowsAnyAsync<Exception>(() => worker); // the window ran out: the host delivers the message again
        storage.Blobs.Current = FaultProxy.Mode.Up;
    }

    /// <summary>Starts a long job and, once it has made progress, takes blob storage away for 0.6 s: every progress write and its retries fail.</summary>
    private static async Task<(string Id, Task Worker)> RunThroughABlobOutageAsync(TestApp app, FaultyStorage storage, int steps = 40)
    {
        var (id, worker) = await app.StartLongJobAsync(steps);
        storage.Blobs.Current = FaultProxy.Mode.Refuse;
        await Task.Delay(600);
        storage.Blobs.Current = FaultProxy.Mode.Up;
        return (id, worker);
    }

    internal static async Task<List<string>> ListAsync(TestApp app, string prefix)
    {
        var names = new List<string>();
        var container = app.Services.GetRequiredService<Azure.Storage.Blobs.BlobServiceClient>().GetBlobContainerClient(app.Options.JobsContainer);
        await foreach (var b in container.GetBlobsAsync(Azure.Storage.Blobs.Models.BlobTraits.None, Azure.Storage.Blobs.Models.BlobStates.None, prefix, default))
            names.Add(b.Name);
        return names;
    }
}
