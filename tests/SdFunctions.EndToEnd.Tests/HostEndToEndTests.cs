using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Azure.Storage.Queues;
using SixLabors.ImageSharp;

namespace SdFunctions.EndToEnd.Tests;

/// <summary>
/// The app as Azure runs it: under the real Functions host, over real HTTP, with function keys enforced, the queue
/// trigger and the poison queue handled by the host's own code.
/// </summary>
[Collection(HostCollection.Name), Trait("Category", "EndToEnd")]
public class HostEndToEndTests(FunctionsHostFixture host, Xunit.Abstractions.ITestOutputHelper output) : HostClient(host), IClassFixture<FunctionsHostFixture>
{
    private readonly FunctionsHostFixture host = host;

    /// <summary>The host's own answers: the OpenAPI document served anonymously (the repository's bytes), and the 401 it documents for every keyed route.</summary>
    [Fact]
    public async Task HealthAndTheOpenApiDocumentAreAnonymousAndEveryOtherRouteNeedsAKey()
    {
        Assert.Equal(HttpStatusCode.OK, (await host.Http.GetAsync(Api("health", key: false))).StatusCode);
        var served = await host.Http.GetAsync(Api("openapi.json", key: false));
        Assert.Equal(HttpStatusCode.OK, served.StatusCode);
        Assert.Equal("application/json", served.Content.Headers.ContentType!.MediaType);
        byte[] document = await File.ReadAllBytesAsync(Path.Combine(FunctionsHostFixture.RepoRoot(), "functions", "SdFunctions.Functions", "openapi.json"));
        Assert.Equal(document, await served.Content.ReadAsByteArrayAsync());
        var paths = JsonDocument.Parse(document).RootElement.GetProperty("paths");

        string id = Guid.NewGuid().ToString("N");
        foreach (var (method, path, documented) in new[]
        {
            (HttpMethod.Post, "generations", "/generations"), (HttpMethod.Get, $"generations/{id}", "/generations/{id}"),
            (HttpMethod.Get, $"generations/{id}/image", "/generations/{id}/image"), (HttpMethod.Post, $"generations/{id}/cancel", "/generations/{id}/cancel"),
        })
        {
            var noKey = await host.Http.SendAsync(new HttpRequestMessage(method, Api(path, key: false)));
            Assert.True(noKey.StatusCode == HttpStatusCode.Unauthorized, $"{method} {path} without a key: {noKey.StatusCode}");
            var wrongKey = await host.Http.SendAsync(new HttpRequestMessage(method, Api(path, key: false) + "?code=wrong"));
            Assert.Equal(HttpStatusCode.Unauthorized, wrongKey.StatusCode);
            // As the document says: a 401 with no body.
            Assert.True(paths.GetProperty(documented).GetProperty(method.Method.ToLowerInvariant()).GetProperty("responses").TryGetProperty("401", out _));
            Assert.Empty(await noKey.Content.ReadAsByteArrayAsync());
        }
        Assert.Equal(HttpStatusCode.NotFound, (await host.Http.GetAsync(Api($"generations/{id}"))).StatusCode); // ?code=
        var header = new HttpRequestMessage(HttpMethod.Get, Api($"generations/{id}", key: false));
        header.Headers.Add("x-functions-key", FunctionsHostFixture.FunctionKey);
        Assert.Equal(HttpStatusCode.NotFound, (await host.Http.SendAsync(header)).StatusCode);
    }

    [Fact]
    public async Task SubmitPollDownloadAndTheSameSeedGivesTheSamePng()
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var submitted = await SubmitAsync("""{"prompt": "a lighthouse", "steps": 3, "seed": 7, "scheduler": "ddim"}""");
        Assert.Equal(HttpStatusCode.Accepted, submitted.StatusCode);
        string id = (await JsonAsync(submitted)).GetProperty("id").GetString()!;
        Assert.EndsWith($"/api/generations/{id}", submitted.Headers.Location!.ToString());

        var done = await WaitAsync(id, Finished);
        Assert.Equal("succeeded", Status(done));
        Assert.Equal((3, 3), (done.GetProperty("progress").GetProperty("step").GetInt32(), done.GetProperty("progress").GetProperty("total").GetInt32()));
        var image = await host.Http.GetAsync(Api($"generations/{id}/image"));
        Assert.Equal("image/png", image.Content.Headers.ContentType!.MediaType);
        byte[] png = await image.Content.ReadAsByteArrayAsync();
        using (var decoded = Image.Load(png)) Assert.Equal((256, 256), (decoded.Width, decoded.Height));
        byte[] viaUrl = await host.Http.GetByteArrayAsync(done.GetProperty("output").GetProperty("imageUrl").GetString());
        Assert.Equal(png, viaUrl);

        string again = await SubmitIdAsync("""{"prompt": "a lighthouse", "steps": 3, "seed": 7, "scheduler": "ddim"}""");
        Assert.Equal("succeeded", Status(await WaitAsync(again, Finished)));
        Assert.Equal(png, await host.Http.GetByteArrayAsync(Api($"generations/{again}/image")));
        output.WriteLine($"two jobs submitted, run and downloaded in {watch.Elapsed.TotalSeconds:F1} s");
    }

    [Fact]
    public async Task AnIdempotentReplayIsTheSameJobAndAnotherBodyIs422()
    {
        string key = Guid.NewGuid().ToString("N");
        var first = await JsonAsync(await SubmitAsync("""{"prompt": "a fox", "steps": 1}""", key));
        var replay = await SubmitAsync("""{"steps": 1, "prompt": "a fox"}""", key);
        Assert.Equal(HttpStatusCode.Accepted, replay.StatusCode);
        Assert.Equal(first.GetProperty("id").GetString(), (await JsonAsync(replay)).GetProperty("id").GetString());
        var other = await SubmitAsync("""{"prompt": "a wolf", "steps": 1}""", key);
        Assert.Equal((HttpStatusCode)422, other.StatusCode);
        Assert.Equal("application/problem+json", other.Content.Headers.ContentType!.MediaType);
        await WaitAsync(first.GetProperty("id").GetString()!, Finished);
    }

    [Fact]
    public async Task CancelingARunningJobStopsItAndAFinishedOneIs409()
    {
        string id = await SubmitIdAsync("""{"prompt": "x", "steps": 60, "scheduler": "ddim"}""");
        await WaitAsync(id, j => Status(j) == "running" && j.GetProperty("progress").GetProperty("step").GetInt32() > 0);
        Assert.Equal(HttpStatusCode.Accepted, (await host.Http.PostAsync(Api($"generations/{id}/cancel"), null)).StatusCode);
        var job = await WaitAsync(id, Finished);
        Assert.Equal("canceled", Status(job));
        Assert.True(job.GetProperty("progress").GetProperty("step").GetInt32() < 60);
        Assert.Equal(HttpStatusCode.Conflict, (await host.Http.GetAsync(Api($"generations/{id}/image"))).StatusCode);
        Assert.Equal(HttpStatusCode.Conflict, (await host.Http.PostAsync(Api($"generations/{id}/cancel"), null)).StatusCode);
    }

    [Fact]
    public async Task AMalformedMessageGoesToThePoisonQueueAndThePoisonFunctionTakesIt()
    {
        var queues = new QueueServiceClient(host.StorageConnectionString);
        var generations = queues.GetQueueClient("generations");
        var poison = queues.GetQueueClient("generations-poison");
        await generations.SendMessageAsync(Convert.ToBase64String("""{"jobId": "../etc"}"""u8));
        await generations.SendMessageAsync(Convert.ToBase64String(Encoding.UTF8.GetBytes($$"""{"jobId": "{{Guid.NewGuid():N}}"}"""))); // no such job: ignored
        var watch = System.Diagnostics.Stopwatch.StartNew();
        async Task<int> Count(QueueClient q) => (await q.GetPropertiesAsync()).Value.ApproximateMessagesCount;
        while ((await Count(generations) > 0 || await Count(poison) > 0) && watch.Elapsed < TimeSpan.FromSeconds(60)) await Task.Delay(250);
        Assert.Equal((0, 0), (await Count(generations), await Count(poison)));
        Assert.Contains(host.Log, line => line.Contains("Unreadable message in the poison queue, dropped"));
        output.WriteLine($"both messages handled in {watch.Elapsed.TotalSeconds:F1} s");
        Assert.Equal(HttpStatusCode.OK, (await host.Http.GetAsync(Api("health", key: false))).StatusCode);
    }

    [Fact]
    public async Task TwentyJobsAtOnceAllSucceedWithOneImageEach()
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var ids = await Task.WhenAll(Enumerable.Range(0, 20).Select(i => SubmitIdAsync($$"""{"prompt": "job {{i}}", "steps": 1, "seed": {{i}}}""")));
        Assert.Equal(20, ids.Distinct().Count());
        foreach (string id in ids)
        {
            var job = await WaitAsync(id, Finished, seconds: 300);
            Assert.Equal(("succeeded", 1), (Status(job), job.GetProperty("attempt").GetInt32()));
        }
        var queues = new QueueServiceClient(host.StorageConnectionString);
        Assert.Equal(0, (await queues.GetQueueClient("generations").GetPropertiesAsync()).Value.ApproximateMessagesCount);
        Assert.Equal(0, (await queues.GetQueueClient("generations-poison").GetPropertiesAsync()).Value.ApproximateMessagesCount);
        var images = new Azure.Storage.Blobs.BlobServiceClient(host.StorageConnectionString).GetBlobContainerClient("images");
        foreach (string id in ids) Assert.True(await images.GetBlobClient($"{id}.png").ExistsAsync());
        output.WriteLine($"20 one-step jobs through the host in {watch.Elapsed.TotalSeconds:F1} s");
    }
}
