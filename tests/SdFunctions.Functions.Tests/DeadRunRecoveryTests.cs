using Microsoft.Extensions.DependencyInjection;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// An instance that dies mid-run leaves its job running with a heartbeat that stopped, and its message invisible for as
/// long as the host's lease on it (minutes). The run's mark lets the sweep queue the job again once the heartbeat is stale;
/// a job whose runs keep dying is failed instead of being run forever.
/// </summary>
[Collection(AzuriteCollection.Name)]
public class DeadRunRecoveryTests
{
    [Fact]
    public async Task ARunStoppedWithoutCleanupIsQueuedAgainOnceItsHeartbeatIsStaleAndFinishesOnce()
    {
        await using var storage = new FaultyStorage();
        await using var app = await TestApp.StartAsync(configure: s =>
        {
            storage.Configure(s);
            s["Jobs:HeartbeatInterval"] = "00:00:00.200";
            s["Jobs:OwnerTimeout"] = "00:00:03";
        });
        await app.Pipelines.GetAsync();
        string id = await app.SubmitLongJobAsync();

        // The host's delivery: the message stays invisible (its lease) while the run goes on.
        var message = (await app.Messages.ReceiveMessageAsync(TimeSpan.FromMinutes(5))).Value;
        using var shutdown = new CancellationTokenSource();
        var run = app.Queue.Process(message, shutdown.Token);
        await app.WaitForProgressAsync(id);
        Assert.Equal([$"running/{id}"], await OutageTests.ListAsync(app, "running/"));

        // The instance stops while storage is out of reach: it can neither give the job back nor queue it again.
        storage.Blobs.Current = FaultProxy.Mode.Refuse;
        storage.Queues.Current = FaultProxy.Mode.Refuse;
        await shutdown.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run);
        storage.Blobs.Current = FaultProxy.Mode.Up;
        storage.Queues.Current = FaultProxy.Mode.Up;
        var left = (await app.Store.GetAsync(id, default))!;
        Assert.Equal((JobStatus.Running, 1), (left.Status, left.Attempt));
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);

        var sweeper = app.Services.GetRequiredService<InterruptedJobSweeper>();
        Assert.Equal(0, (await sweeper.SweepAsync(default)).Resumed); // its heartbeat could still be a live run's
        await Task.Delay(app.Options.OwnerTimeout);
        Assert.Equal(1, (await sweeper.SweepAsync(default)).Resumed);
        Assert.Equal(0, (await sweeper.SweepAsync(default)).Resumed); // queued once per timeout, not on every sweep

        await app.RunNextMessageAsync();
        var done = await app.JobAsync(id);
        Assert.Equal(("succeeded", 2), (done.GetProperty("status").GetString(), done.GetProperty("attempt").GetInt32()));
        Assert.Empty(await OutageTests.ListAsync(app, "running/"));
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);
        Assert.True(await app.Images.GetBlobClient($"{id}.png").ExistsAsync());

        // The first delivery's message, when its lease runs out, finds the job finished.
        await app.Queue.Process(Delivery.Of(message.Body.ToString(), 2), default);
        Assert.Equal(2, (await app.JobAsync(id)).GetProperty("attempt").GetInt32());
    }

    [Fact]
    public async Task AJobWhoseRunsKeepDyingIsFailedNotRunAgain()
    {
        await using var app = await TestApp.StartAsync(configure: s => { s["Jobs:HeartbeatInterval"] = "00:00:00.200"; s["Jobs:OwnerTimeout"] = "00:00:01"; });
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 2}""");
        string id = IdOf(submitted);
        await app.Messages.ReceiveMessageAsync(TimeSpan.FromMinutes(5)); // held by the last instance that died with it
        // What the last of its instances left (each died running it, e.g. out of memory): running, a stopped heartbeat, its mark.
        var stopped = DateTimeOffset.UtcNow;
        await app.Store.UpdateAsync(id, r => r with
        {
            Status = JobStatus.Running, Attempt = app.Options.MaxDequeueCount, RunOwner = "killed-instance", HeartbeatAt = stopped, StartedAt = stopped,
        }, default);
        await app.Store.MarkAsync(JobMark.Running, id, default);
        await Task.Delay(1100);

        Assert.Equal(1, (await app.Services.GetRequiredService<InterruptedJobSweeper>().SweepAsync(default)).Resumed);
        await app.RunNextMessageAsync();
        var failed = await app.JobAsync(id);
        Assert.Equal(("failed", app.Options.MaxDequeueCount), (failed.GetProperty("status").GetString(), failed.GetProperty("attempt").GetInt32()));
        var error = failed.GetProperty("error");
        Assert.Equal(ProblemTypes.GenerationFailed, error.GetProperty("type").GetString());
        Assert.Contains("stopped 3 times", error.GetProperty("detail").GetString());
        Assert.False(await app.Images.GetBlobClient($"{id}.png").ExistsAsync());
        Assert.Empty(await OutageTests.ListAsync(app, "running/"));
    }
}
