using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using SdFunctions.Functions.Tests;

namespace SdFunctions.EndToEnd.Tests;

/// <summary>
/// The app with webhooks on (loopback allowed) and its data account's blob endpoint behind a <see cref="FaultProxy"/>; the host's
/// own account (AzureWebJobsStorage: leases, keys) stays direct, so only the app sees the outage.
/// </summary>
public sealed class FaultyHostFixture : FunctionsHostFixture
{
    public const string Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"; // the Standard Webhooks spec's example secret
    public FaultProxy? Blobs { get; private set; }

    protected override void Configure(IDictionary<string, string?> settings)
    {
        Blobs ??= new FaultProxy(AzuriteBlobPort);
        settings["JobsStorage"] = ConnectionStringVia(Blobs.Port);
        settings["Webhooks__SigningSecret"] = Secret;
        settings["Webhooks__AllowHttpLoopback"] = "true";
        settings["Jobs__StorageMaxRetries"] = "2"; // an outage shows within seconds, not the SDK's minutes
        settings["Jobs__StorageNetworkTimeout"] = "00:00:02";
        settings["Jobs__PublishRetryWindow"] = "00:01:00";
    }

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        if (Blobs is not null) await Blobs.DisposeAsync();
    }
}

/// <summary>Issue 28's defects that only show under the real host: its HTTP proxy, its queue triggers and their one slot.</summary>
[Collection(HostCollection.Name), Trait("Category", "EndToEnd")]
public class HostFaultTests(FaultyHostFixture host, Xunit.Abstractions.ITestOutputHelper output) : HostClient(host), IClassFixture<FaultyHostFixture>
{
    private readonly FaultyHostFixture host = host;

    /// <summary>A request body of unknown length that never ends by itself: 50 MB of one multipart file part, sent in chunks.</summary>
    private sealed class EndlessMultipart(string boundary, long bytes) : HttpContent
    {
        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            await stream.WriteAsync(Encoding.ASCII.GetBytes($"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"));
            var chunk = new byte[64 * 1024];
            for (long sent = 0; sent < bytes; sent += chunk.Length) await stream.WriteAsync(chunk);
            await stream.WriteAsync(Encoding.ASCII.GetBytes($"\r\n--{boundary}--\r\n"));
        }

        protected override bool TryComputeLength(out long length)
        {
            length = -1;
            return false; // chunked: the app cannot refuse it from Content-Length
        }
    }

    /// <summary>Defect: the app answered 413 before the body ended and the host's proxy turned that into a bare 500.</summary>
    [Fact]
    public async Task AFiftyMegabyteChunkedMultipartBodyGetsThe413Problem()
    {
        const string boundary = "sdf-boundary";
        var content = new EndlessMultipart(boundary, 50L * 1024 * 1024);
        content.Headers.ContentType = MediaTypeHeaderValue.Parse($"multipart/form-data; boundary={boundary}");
        var watch = System.Diagnostics.Stopwatch.StartNew();
        using var response = await host.Http.PostAsync(Api("generations"), content);
        string body = await response.Content.ReadAsStringAsync();
        output.WriteLine($"{(int)response.StatusCode} after {watch.Elapsed.TotalSeconds:F1} s: {body}");
        if (response.StatusCode != HttpStatusCode.RequestEntityTooLarge) output.WriteLine(host.RecentLog);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        Assert.Equal("/problems/request-too-large", JsonDocument.Parse(body).RootElement.GetProperty("type").GetString());
    }

    /// <summary>
    /// Defect: an outage over the end of a run failed its upload, then its release, and the job ran again from scratch (or failed
    /// as "run stopped 3 times"). Now the run waits the outage out with its image in memory: one attempt, the image kept.
    /// </summary>
    [Fact]
    public async Task AFinishedImageSurvivesA25SecondOutageOverTheEndOfItsRun()
    {
        string id = await SubmitIdAsync("""{"prompt": "outage", "steps": 150}""");
        await WaitAsync(id, j => j.GetProperty("progress").GetProperty("step").GetInt32() > 0);
        host.Blobs!.Current = FaultProxy.Mode.Refuse; // the run's last steps, its upload and its record
        await Task.Delay(TimeSpan.FromSeconds(25));
        host.Blobs.Current = FaultProxy.Mode.Up;
        var job = await WaitAsync(id, j => j.GetProperty("status").GetString() is "succeeded" or "failed", seconds: 120);
        Assert.Equal(("succeeded", 1), (job.GetProperty("status").GetString(), job.GetProperty("attempt").GetInt32()));
        var images = new Azure.Storage.Blobs.BlobServiceClient(host.StorageConnectionString).GetBlobContainerClient("images");
        Assert.True(await images.GetBlobClient($"{id}.png").ExistsAsync());
        output.WriteLine($"one attempt, {job.GetProperty("output").GetProperty("timings").GetProperty("totalSeconds").GetDouble():F1} s through a 25 s outage");
    }

    /// <summary>Defect: host.json's batchSize 1 also serialised webhooks: an honest receiver waited 80.7 s behind seven hanging ones.</summary>
    [Fact]
    public async Task WithTenReceiversHangingAnHonestOneGetsItsEventWithin15Seconds()
    {
        var hanging = Enumerable.Range(0, 10).Select(_ => new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0)).ToList();
        var held = new System.Collections.Concurrent.ConcurrentBag<System.Net.Sockets.TcpClient>();
        using var honest = new HttpListener();
        try
        {
            foreach (var listener in hanging)
            {
                listener.Start();
                _ = Task.Run(async () => { try { while (true) held.Add(await listener.AcceptTcpClientAsync()); } catch (Exception) { } });
            }
            var free = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
            free.Start();
            int honestPort = ((IPEndPoint)free.LocalEndpoint).Port;
            free.Stop();
            honest.Prefixes.Add($"http://127.0.0.1:{honestPort}/hooks/");
            honest.Start();
            var received = new TaskCompletionSource<DateTimeOffset>();
            _ = Task.Run(async () =>
            {
                var context = await honest.GetContextAsync();
                received.TrySetResult(DateTimeOffset.UtcNow);
                context.Response.StatusCode = 200;
                context.Response.Close();
            });

            foreach (var listener in hanging)
                await SubmitIdAsync($$$"""{"prompt": "x", "steps": 1, "webhook": {"url": "http://127.0.0.1:{{{((IPEndPoint)listener.LocalEndpoint).Port}}}/hooks/"}}""");
            string id = await SubmitIdAsync($$$"""{"prompt": "x", "steps": 1, "webhook": {"url": "http://127.0.0.1:{{{honestPort}}}/hooks/"}}""");
            var job = await WaitAsync(id, j => j.GetProperty("status").GetString() == "succeeded", seconds: 180);
            var completedAt = job.GetProperty("completedAt").GetDateTimeOffset();
            var got = await received.Task.WaitAsync(TimeSpan.FromSeconds(60));
            output.WriteLine($"the honest receiver got its event {(got - completedAt).TotalSeconds:F1} s after its job ended; {held.Count} hanging connections held");
            Assert.True(got - completedAt < TimeSpan.FromSeconds(15), $"{(got - completedAt).TotalSeconds:F1} s");
        }
        finally
        {
            hanging.ForEach(l => l.Stop());
            foreach (var c in held) c.Dispose();
        }
    }
}
