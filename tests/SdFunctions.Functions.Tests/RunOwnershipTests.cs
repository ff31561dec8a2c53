using System.Text.Json;
using Microsoft.AspNetCore.Mvc;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// One message held by two deliveries at once (a lease that expired under a live instance): one run owns the job, the
/// other backs off; a dead owner is taken over; a run that lost its job writes nothing.
/// </summary>
[Collection(AzuriteCollection.Name)]
public class RunOwnershipTests
{
    private static string Message(string id) => JsonSerializer.Serialize(new JobMessage(id), JobJson.Options);

    private static async Task<int> MessageCount(TestApp app) => (await app.Messages.GetPropertiesAsync()).Value.ApproximateMessagesCount;

    [Fact]
    public async Task ASecondDeliveryOfARunningJobBacksOffAndItsFailuresDoNotFailTheJob()
    {
        await using var app = await TestApp.StartAsync();
        var (id, owner) = await app.StartLongJobAsync();
        var before = (await app.Store.GetAsync(id, default))!;

        // The same message again, on its last delivery, and then in the poison queue: neither touches the live run.
        await app.Queue.Process(Delivery.Of(Message(id), app.Options.MaxDequeueCount), default);
        await app.Queue.Poison(Message(id), default);
        var during = (await app.Store.GetAsync(id, default))!;
        Assert.Equal((JobStatus.Running, 1, before.RunOwner), (during.Status, during.Attempt, during.RunOwner));
        Assert.Equal(2, await MessageCount(app)); // the owner's message and the one the duplicate left to come back later

        var steps = new List<int>();
        while (!owner.IsCompleted) { steps.Add(StepOf(await app.JobAsync(id))); await Task.Delay(20); }
        await owner;
        Assert.Equal(steps.Order(), steps); // one run reports: progress never goes back
        var done = await app.JobAsync(id);
        Assert.Equal("succeeded", done.GetProperty("status").GetString());
        Assert.Equal(1, done.GetProperty("attempt").GetInt32());
        Assert.IsType<FileContentResult>(await app.Api.GetImage(TestApp.Request("GET", $"/api/generations/{id}/image"), id, default));
    }

    [Fact]
    public async Task TwoDeliveriesAtOnceRunTheJobOnce()
    {
        await using var app = await TestApp.StartAsync();
        await app.Pipelines.GetAsync();
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 30, "seed": 8}""");
        string id = IdOf(submitted);
        var runs = new[] { app.Queue.Process(Delivery.Of(Message(id), 1), default), app.Queue.Process(Delivery.Of(Message(id), 2), default) };
        await Task.WhenAny(runs);
        Assert.Equal("running", (await app.JobAsync(id)).GetProperty("status").GetString()); // the one that ended first backed off
        await Task.WhenAll(runs);
        var done = await app.JobAsync(id);
        Assert.Equal(("succeeded", 1), (done.GetProperty("status").GetString(), done.GetProperty("attempt").GetInt32()));
    }

    [Fact]
    public async Task ARunWhoseOwnerDiedIsTakenOverAsTheNextAttempt()
    {
        await using var app = await TestApp.StartAsync(configure: s =>
        {
            s["Jobs:HeartbeatInterval"] = "00:00:00.200";
            s["Jobs:OwnerTimeout"] = "00:00:01";
        });
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 2, "seed": 8}""");
        string id = IdOf(submitted);
        // What a crashed instance leaves: running, owned, a heartbeat that stopped.
        await app.Store.UpdateAsync(id, r => r with
        {
            Status = JobStatus.Running, Attempt = 1, RunOwner = "crashed-instance", HeartbeatAt = DateTimeOffset.UtcNow, StartedAt = DateTimeOffset.UtcNow,
        }, default);
        await app.Queue.Process(Delivery.Of(Message(id), 2), default);
        Assert.Equal("crashed-instance", (await app.Store.GetAsync(id, default))!.RunOwner); // still fresh: backed off

        await Task.Delay(1100);
        await app.Queue.Process(Delivery.Of(Message(id), 3), default);
        var done = await app.JobAsync(id);
        Assert.Equal(("succeeded", 2), (done.GetProperty("status").GetString(), done.GetProperty("attempt").GetInt32()));
    }

    [Fact]
    public async Task ARunThatLostItsJobStopsAndWritesNothing()
    {
        await using var app = await TestApp.StartAsync();
        var (id, run) = await app.StartLongJobAsync();

        var takenOver = await app.Store.UpdateAsync(id, r => r with { RunOwner = "another-delivery", HeartbeatAt = DateTimeOffset.UtcNow, Attempt = 2 }, default);
        await run; // stops without throwing
        var after = (await app.Store.GetAsync(id, default))!;
        Assert.Equal((JobStatus.Running, "another-delivery"), (after.Status, after.RunOwner));
        Assert.Equal(takenOver!.Progress, after.Progress); // the old run wrote no progress after losing the job
        Assert.False(await app.Images.GetBlobClient($"{id}.png").ExistsAsync());
    }
}
