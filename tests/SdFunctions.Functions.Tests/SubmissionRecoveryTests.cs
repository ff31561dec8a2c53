using Microsoft.Extensions.DependencyInjection;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// A submission interrupted between its job record and its queue message (storage lost at that moment, as a crash
/// would leave it: the record and the idempotency claim exist, no message does) is queued by the client's replay or by
/// the sweep, never left waiting forever.
/// </summary>
[Collection(AzuriteCollection.Name)]
public class SubmissionRecoveryTests
{
    private const string Request = """{"prompt": "a fox", "steps": 2, "seed": 4}""";
    private static Dictionary<string, string> Key(string key) => new() { ["Idempotency-Key"] = key };

    /// <summary>Submits while storage goes away exactly when the message is sent: the undo cannot run either.</summary>
    private static async Task<string> SubmitInterruptedAsync(TestApp app, FaultyStorage storage, string key)
    {
        var before = await OutageTests.ListAsync(app, "jobs/");
        storage.Queues.Current = FaultProxy.Mode.Refuse; // also drops the pooled connection, so the send connects anew
        storage.Queues.OnConnect = () => storage.Blobs.Current = FaultProxy.Mode.Refuse;
        var (interrupted, _) = await app.SubmitAsync(Request, Key(key));
        AssertProblem(interrupted, 503, ProblemTypes.ServiceUnavailable);
        storage.Queues.OnConnect = null;
        storage.Queues.Current = FaultProxy.Mode.Up;
        storage.Blobs.Current = FaultProxy.Mode.Up;

        var jobs = await OutageTests.ListAsync(app, "jobs/");
        string id = Assert.Single(jobs.Except(before))["jobs/".Length..^".json".Length];
        Assert.Equal("queued", (await app.Store.GetAsync(id, default))!.Status.ToString().ToLowerInvariant());
        Assert.Null((await app.Messages.PeekMessageAsync()).Value); // the state a crash leaves: no message
        return id;
    }

    [Fact]
    public async Task AReplayOfAJobThatWasNeverQueuedQueuesIt()
    {
        await using var storage = new FaultyStorage();
        await using var app = await TestApp.StartAsync(configure: s => { storage.Configure(s); s["Jobs:SubmitGracePeriod"] = "00:00:00.300"; });
        string id = await SubmitInterruptedAsync(app, storage, "order-1");

        // Within the grace period the first submitter might still be sending: the replay answers without queuing.
        var (early, _) = await app.SubmitAsync(Request, Key("order-1"));
        Assert.Equal(id, Body(early).GetProperty("id").GetString());
        await Task.Delay(400);
        var (replay, _) = await app.SubmitAsync(Request, Key("order-1"));
        Assert.Equal(202, replay.StatusCode);
        Assert.Equal(id, Body(replay).GetProperty("id").GetString());

        await app.RunNextMessageAsync();
        Assert.Equal("succeeded", (await app.JobAsync(id)).GetProperty("status").GetString());
        var (again, _) = await app.SubmitAsync(Request, Key("order-1")); // queued once: a later replay adds no message
        Assert.Equal(id, Body(again).GetProperty("id").GetString());
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);
    }

    [Fact]
    public async Task TheSweepQueuesAJobThatWasNeverQueued()
    {
        await using var storage = new FaultyStorage();
        await using var app = await TestApp.StartAsync(configure: s => { storage.Configure(s); s["Jobs:RequeueAfter"] = "00:00:02"; });
        var (normal, _) = await app.SubmitAsync("""{"prompt": "queued normally", "steps": 2}""");
        await app.RunNextMessageAsync();
        string id = await SubmitInterruptedAsync(app, storage, "order-2");

        var tooSoon = await app.Services.GetRequiredService<InterruptedJobSweeper>().SweepAsync(default);
        Assert.Equal(0, tooSoon.Requeued);
        await Task.Delay(2100);
        await app.Maintenance.Sweep(new Microsoft.Azure.Functions.Worker.TimerInfo(), default);
        Assert.Empty(await OutageTests.ListAsync(app, "pending/"));

        var message = await app.RunNextMessageAsync();
        Assert.Contains(id, message.Body.ToString());
        Assert.Equal("succeeded", (await app.JobAsync(id)).GetProperty("status").GetString());
        Assert.Null((await app.Messages.PeekMessageAsync()).Value); // the normally queued job was not queued again
        Assert.Equal("succeeded", (await app.JobAsync(IdOf(normal))).GetProperty("status").GetString());
    }

    [Fact]
    public async Task TheSweepFailsAJobThatCouldNotBeQueuedInTime()
    {
        await using var storage = new FaultyStorage();
        await using var app = await TestApp.StartAsync(configure: s =>
        {
            storage.Configure(s);
            s["Jobs:RequeueAfter"] = "00:00:00.100";
            s["Jobs:MaxQueueWait"] = "00:00:00.200";
        });
        string id = await SubmitInterruptedAsync(app, storage, "order-3");
        await Task.Delay(300);
        var swept = await app.Services.GetRequiredService<InterruptedJobSweeper>().SweepAsync(default);
        Assert.Equal((0, 1), (swept.Requeued, swept.Failed));
        var job = await app.JobAsync(id);
        Assert.Equal("failed", job.GetProperty("status").GetString());
        Assert.Equal(ProblemTypes.ServiceUnavailable, job.GetProperty("error").GetProperty("type").GetString());
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);
    }
}
