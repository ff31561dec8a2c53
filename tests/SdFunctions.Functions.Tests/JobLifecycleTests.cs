using System.Text.Json;
using Microsoft.AspNetCore.Mvc;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>Idempotency, cancellation and at-least-once delivery, on Azurite with the real pipeline.</summary>
[Collection(AzuriteCollection.Name)]
public class JobLifecycleTests
{
    private static Dictionary<string, string> Key(string key) => new() { ["Idempotency-Key"] = key };

    private static async Task<int> QueueLength(TestApp app) => (await app.Messages.PeekMessagesAsync(32)).Value.Length;

    [Fact]
    public async Task SameKeyAndBodyIsTheSameJobOtherBodyIs422()
    {
        await using var app = await TestApp.StartAsync();
        var (first, _) = await app.SubmitAsync("""{"prompt": "a fox", "steps": 2}""", Key("order-17"));
        var (replay, response) = await app.SubmitAsync("""{ "steps": 2,   "prompt": "a fox" }""", Key("order-17")); // same JSON, other spacing/order
        Assert.Equal(202, replay.StatusCode);
        Assert.Equal(IdOf(first), IdOf(replay));
        Assert.Equal(Body(first).GetProperty("input").GetProperty("seed").GetInt64(), Body(replay).GetProperty("input").GetProperty("seed").GetInt64());
        Assert.EndsWith(IdOf(first), response.Headers.Location.ToString());
        Assert.Equal(1, await QueueLength(app));

        var (other, _) = await app.SubmitAsync("""{"prompt": "a wolf", "steps": 2}""", Key("order-17"));
        AssertProblem(other, 422, ProblemTypes.IdempotencyConflict);
        Assert.DoesNotContain(IdOf(first), other.Content); // another caller's job id is never shown

        var (unrelated, _) = await app.SubmitAsync("""{"prompt": "a fox", "steps": 2}""", Key("order-18"));
        Assert.NotEqual(IdOf(first), IdOf(unrelated));
        Assert.Equal(2, await QueueLength(app));

        var (tooLong, _) = await app.SubmitAsync("""{"prompt": "a fox"}""", Key(new string('k', 201)));
        AssertProblem(tooLong, 400, ProblemTypes.Validation);
    }

    [Fact]
    public async Task IdempotencyKeysAreScopedByTheCallersFunctionKey()
    {
        await using var app = await TestApp.StartAsync();
        Dictionary<string, string> As(string functionKey) => new() { ["Idempotency-Key"] = "order-1", ["x-functions-key"] = functionKey };
        var (alice, _) = await app.SubmitAsync("""{"prompt": "a fox", "steps": 2}""", As("key-of-alice"));
        var (bob, _) = await app.SubmitAsync("""{"prompt": "a wolf", "steps": 2}""", As("key-of-bob")); // same key, other caller: no 422
        Assert.Equal(202, bob.StatusCode);
        Assert.NotEqual(IdOf(alice), IdOf(bob));
        var (aliceAgain, _) = await app.SubmitAsync("""{"prompt": "a fox", "steps": 2}""", As("key-of-alice"));
        Assert.Equal(IdOf(alice), IdOf(aliceAgain));
        // The key may also come as ?code=, as the host accepts it.
        var req = TestApp.Request("POST", "/api/generations", """{"prompt": "a fox", "steps": 2}""", headers: Key("order-1"));
        req.QueryString = new Microsoft.AspNetCore.Http.QueryString("?code=key-of-alice");
        Assert.Equal(IdOf(alice), IdOf((ContentResult)await app.Api.Submit(req, default)));
        Assert.Equal(2, await QueueLength(app));
    }

    [Fact]
    public async Task ConcurrentRetriesWithOneKeyMakeOneJob()
    {
        await using var app = await TestApp.StartAsync();
        var results = await Task.WhenAll(Enumerable.Range(0, 6).Select(_ => app.SubmitAsync("""{"prompt": "a fox", "steps": 2}""", Key("burst"))));
        Assert.Single(results.Select(r => IdOf(r.Result)).Distinct());
        Assert.Equal(1, await QueueLength(app));
    }

    [Fact]
    public async Task ACanceledQueuedJobNeverRuns()
    {
        await using var app = await TestApp.StartAsync();
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 2}""");
        string id = IdOf(submitted);
        var canceled = await app.CancelAsync(id);
        Assert.Equal(200, canceled.StatusCode);
        Assert.Equal("canceled", Body(canceled).GetProperty("status").GetString());

        await app.RunNextMessageAsync();
        var job = await AssertCanceledForGood(app, id);
        Assert.Equal(0, job.GetProperty("attempt").GetInt32());
        var image = (ContentResult)await app.Api.GetImage(TestApp.Request("GET", $"/api/generations/{id}/image"), id, default);
        Assert.Equal($"Job {id} was canceled: it has no image.", AssertProblem(image, 409, ProblemTypes.NotFinished).GetProperty("detail").GetString());
    }

    /// <summary>Friction: while a new instance loaded the model (~15 s) its job showed running, step 0 of null.</summary>
    [Fact]
    public async Task ARunShowsItsPhaseLoadingTheModelThenGeneratingAndNoneOnceDone()
    {
        await using var app = await TestApp.StartAsync();
        Assert.False(app.Pipelines.IsLoaded);
        string id = await app.SubmitLongJobAsync();
        var run = app.RunNextMessageAsync();
        var phases = new List<string?>();
        while (!run.IsCompleted)
        {
            var progress = (await app.JobAsync(id)).GetProperty("progress");
            string? phase = progress.GetProperty("phase").GetString();
            if (phases.Count == 0 || phases[^1] != phase) phases.Add(phase);
            await Task.Delay(20);
        }
        await run;
        Assert.Contains(JobProgress.Loading, phases);
        Assert.Contains(JobProgress.Generating, phases);
        Assert.True(phases.IndexOf(JobProgress.Loading) < phases.IndexOf(JobProgress.Generating), string.Join(", ", phases));
        Assert.Equal(JsonValueKind.Null, (await app.JobAsync(id)).GetProperty("progress").GetProperty("phase").ValueKind);
    }

    [Fact]
    public async Task ARunningJobStopsWhenCanceled()
    {
        await using var app = await TestApp.StartAsync();
        var (id, worker) = await app.StartLongJobAsync(); // loaded first, so the job is running (not loading) when we cancel
        var accepted = await app.CancelAsync(id);
        Assert.Equal(202, accepted.StatusCode);
        await worker;

        var job = await AssertCanceledForGood(app, id);
        Assert.True(StepOf(job) < 150);
    }

    /// <summary>Canceled, no image written, and a second cancel is refused as finished.</summary>
    private static async Task<JsonElement> AssertCanceledForGood(TestApp app, string id)
    {
        var job = await app.JobAsync(id);
        Assert.Equal("canceled", job.GetProperty("status").GetString());
        Assert.False(await app.Images.GetBlobClient($"{id}.png").ExistsAsync());
        AssertProblem(await app.CancelAsync(id), 409, ProblemTypes.AlreadyFinished);
        return job;
    }

    [Fact]
    public async Task ARedeliveredMessageForAFinishedJobDoesNothing()
    {
        await using var app = await TestApp.StartAsync();
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 2, "seed": 5}""");
        string id = IdOf(submitted);
        var message = await app.RunNextMessageAsync();
        var first = await app.JobAsync(id);
        var etag = (await app.Images.GetBlobClient($"{id}.png").GetPropertiesAsync()).Value.ETag;

        await app.Queue.Process(Delivery.Of(message.Body.ToString(), 2), default); // the same message, delivered again

        var second = await app.JobAsync(id);
        Assert.Equal(1, second.GetProperty("attempt").GetInt32());
        Assert.Equal(first.GetProperty("completedAt").GetString(), second.GetProperty("completedAt").GetString());
        Assert.Equal(etag, (await app.Images.GetBlobClient($"{id}.png").GetPropertiesAsync()).Value.ETag);
    }

    [Fact]
    public async Task AWorkerThatDiesMidRunIsRetriedAndEndsWithOneImage()
    {
        await using var app = await TestApp.StartAsync();
        await app.Pipelines.GetAsync();
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 120, "seed": 9, "scheduler": "ddim"}""");
        string id = IdOf(submitted);
        var message = (await app.Messages.ReceiveMessageAsync(TimeSpan.FromMinutes(5))).Value;

        // The host shuts down mid-run: the function sees its token canceled and the message is not completed.
        using var shutdown = new CancellationTokenSource();
        var run = app.Queue.Process(message, shutdown.Token);
        await app.WaitForProgressAsync(id);
        await shutdown.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run);
        var interrupted = await app.JobAsync(id);
        Assert.Equal("queued", interrupted.GetProperty("status").GetString()); // given back, so the redelivery need not wait for a stale heartbeat
        Assert.Equal(1, interrupted.GetProperty("attempt").GetInt32());

        // The message comes back (dequeue count 2) and the job runs to the end.
        await app.Queue.Process(Delivery.Of(message.Body.ToString(), 2), default);
        var done = await app.JobAsync(id);
        Assert.Equal("succeeded", done.GetProperty("status").GetString());
        Assert.Equal(2, done.GetProperty("attempt").GetInt32());
        var blobs = new List<string>();
        await foreach (var b in app.Images.GetBlobsAsync(Azure.Storage.Blobs.Models.BlobTraits.None, Azure.Storage.Blobs.Models.BlobStates.None, null, default)) blobs.Add(b.Name);
        Assert.Equal([$"{id}.png"], blobs);
    }

    [Fact]
    public async Task AMalformedMessageGoesToThePoisonQueueWithoutFailingTheHost()
    {
        await using var app = await TestApp.StartAsync();
        foreach (string bad in new[] { "not json", """{"jobId": "../etc"}""", """{"other": 1}""" })
        {
            await app.Queue.Process(Delivery.Of(bad, 1), default); // does not throw
            var poisoned = (await app.Poison.ReceiveMessageAsync()).Value;
            Assert.Equal(bad, poisoned.Body.ToString());
            await app.Queue.Poison(poisoned.Body.ToString(), default); // logged and dropped, does not throw
            await app.Poison.DeleteMessageAsync(poisoned.MessageId, poisoned.PopReceipt);
        }
    }

    [Fact]
    public async Task AJobWhoseRetriesRunOutIsFailedWithItsLastErrorByThePoisonFunction()
    {
        await using var app = await TestApp.StartAsync(modelDirectory: BrokenModel);
        var (id, message) = await SubmitAndReceiveAsync(app);

        for (int attempt = 1; attempt < app.Options.MaxDequeueCount; attempt++)
        {
            await Assert.ThrowsAnyAsync<Exception>(() => app.Queue.Process(Delivery.Of(message.Body.ToString(), attempt), default));
            var retrying = await app.JobAsync(id);
            Assert.Equal("queued", retrying.GetProperty("status").GetString()); // waiting for its retry
            Assert.Equal(attempt, retrying.GetProperty("attempt").GetInt32());
            Assert.Empty(await OutageTests.ListAsync(app, "running/")); // the host brings the message back: the sweep need not
        }
        // The host moves the message to the poison queue after the last dequeue; the poison function fails the job.
        await app.Queue.Poison(message.Body.ToString(), default);
        var failed = await app.JobAsync(id);
        Assert.Equal("failed", failed.GetProperty("status").GetString());
        var error = failed.GetProperty("error");
        Assert.Equal((ProblemTypes.ServiceUnavailable, "Model unavailable"), (error.GetProperty("type").GetString(), error.GetProperty("title").GetString()));
        AssertSafe(failed, (await app.Store.GetAsync(id, default))!);
    }

    /// <summary>
    /// Clients see a stable text and a correlation id, never the exception (paths, Azure request ids); the record keeps
    /// the detail internally under the same correlation id.
    /// </summary>
    private static void AssertSafe(JsonElement job, JobRecord record)
    {
        var error = job.GetProperty("error");
        string detail = error.GetProperty("detail").GetString()!;
        string correlationId = error.GetProperty("correlationId").GetString()!;
        Assert.DoesNotContain(BrokenModel, job.GetRawText());
        Assert.DoesNotContain("Exception", detail);
        Assert.Contains(correlationId, detail);
        Assert.False(job.TryGetProperty("lastError", out _));
        Assert.Equal(correlationId, record.LastError!.CorrelationId);
        Assert.Contains(BrokenModel, record.LastError.Detail);
    }

    [Fact]
    public async Task AnErrorOnTheLastAttemptFailsTheJobAtOnce()
    {
        await using var app = await TestApp.StartAsync(modelDirectory: BrokenModel);
        var (id, message) = await SubmitAndReceiveAsync(app);
        await app.Queue.Process(Delivery.Of(message.Body.ToString(), app.Options.MaxDequeueCount), default); // no throw: final
        var failed = await app.JobAsync(id);
        Assert.Equal("failed", failed.GetProperty("status").GetString());
        Assert.Equal(503, failed.GetProperty("error").GetProperty("status").GetInt32()); // the model, not the request
        AssertSafe(failed, (await app.Store.GetAsync(id, default))!);
    }

    // A model folder that cannot load: every attempt fails, as a broken deployment would.
    private static string BrokenModel => TestApp.UnloadableModel;

    /// <summary>Submits a small job and takes its message off the queue, as the trigger would.</summary>
    private static async Task<(string Id, Azure.Storage.Queues.Models.QueueMessage Message)> SubmitAndReceiveAsync(TestApp app)
    {
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 2}""");
        return (IdOf(submitted), (await app.Messages.ReceiveMessageAsync()).Value);
    }
}
