using System.Text;
using System.Text.Json;
using Azure.Storage.Blobs;
using Azure.Storage.Queues;
using Azure.Storage.Queues.Models;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Jobs;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// The app as the Functions host builds it (the real AddGenerationJobs registration, settings from configuration),
/// on Azurite with names of its own, the tiny bundle as the model, and the function classes ready to call.
/// </summary>
public sealed class TestApp : IAsyncDisposable
{
    public ServiceProvider Services { get; }
    public GenerationsApi Api { get; }
    public GenerationQueueFunctions Queue { get; }
    public HealthApi Health { get; }
    public MaintenanceFunctions Maintenance { get; }
    public WebhookFunctions WebhookFunctions { get; }
    public QueueClient WebhookMessages { get; }
    public JobStore Store => Services.GetRequiredService<JobStore>();
    public QueueClient Messages { get; }
    public QueueClient Poison { get; }
    public BlobContainerClient Images { get; }
    public string CacheDirectory { get; }

    /// <param name="addServices">Adds to the app's services, as Program.cs does (e.g. its telemetry), with the app's configuration.</param>
    public TestApp(string? modelDirectory = null, Action<Dictionary<string, string?>>? configure = null,
        Action<IServiceCollection, IConfiguration>? addServices = null)
    {
        string suffix = Guid.NewGuid().ToString("N")[..10];
        // Shared by every test app and kept between runs: optimized graphs and downloaded bundles are reusable.
        CacheDirectory = Path.Combine(Path.GetTempPath(), "sdf-functions-tests");
        var settings = new Dictionary<string, string?>
        {
            ["JobsStorage"] = AzuriteFixture.ConnectionString,
            ["Jobs:QueueName"] = $"gen-{suffix}",
            ["Jobs:JobsContainer"] = $"jobs-{suffix}",
            ["Jobs:ImagesContainer"] = $"images-{suffix}",
            ["Webhooks:QueueName"] = $"hooks-{suffix}",
            ["Jobs:Width"] = "256",
            ["Jobs:Height"] = "256",
            ["Jobs:ProgressInterval"] = "00:00:00.100",
            ["Model:Directory"] = modelDirectory ?? AzuriteFixture.TinySd,
            ["Model:CacheDirectory"] = CacheDirectory,
        };
        configure?.Invoke(settings);
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(settings).Build();
        var services = new ServiceCollection().AddLogging(b => b.SetMinimumLevel(LogLevel.Warning));
        services.AddGenerationJobs(configuration);
        addServices?.Invoke(services, configuration);
        Services = services.BuildServiceProvider();
        Api = ActivatorUtilities.CreateInstance<GenerationsApi>(Services);
        Queue = ActivatorUtilities.CreateInstance<GenerationQueueFunctions>(Services);
        Health = ActivatorUtilities.CreateInstance<HealthApi>(Services);
        Maintenance = ActivatorUtilities.CreateInstance<MaintenanceFunctions>(Services);
        WebhookFunctions = ActivatorUtilities.CreateInstance<WebhookFunctions>(Services);
        var queues = Services.GetRequiredService<QueueServiceClient>();
        Messages = queues.GetQueueClient($"gen-{suffix}");
        Poison = queues.GetQueueClient($"gen-{suffix}-poison");
        WebhookMessages = queues.GetQueueClient($"hooks-{suffix}");
        Images = Services.GetRequiredService<BlobServiceClient>().GetBlobContainerClient($"images-{suffix}");
    }

    /// <summary>
    /// A bundle folder that passes the start-up check (it has a model_index.json) but cannot load: its graphs are missing, as in a
    /// broken deployment. Made once per test run and only read.
    /// </summary>
    public static string UnloadableModel => Unloadable.Value;
    private static readonly Lazy<string> Unloadable = new(() =>
    {
        string dir = Path.Combine(Path.GetTempPath(), "sdf-unloadable-model");
        Directory.CreateDirectory(dir);
        File.Copy(Path.Combine(AzuriteFixture.TinySd, "model_index.json"), Path.Combine(dir, "model_index.json"), overwrite: true);
        return dir;
    });

    /// <summary>Starts the app's hosted services, as the host does: they create the queues and containers.</summary>
    public async Task InitializeAsync()
    {
        foreach (var service in Services.GetServices<Microsoft.Extensions.Hosting.IHostedService>()) await service.StartAsync(default);
    }

    public static async Task<TestApp> StartAsync(string? modelDirectory = null, Action<Dictionary<string, string?>>? configure = null,
        Action<IServiceCollection, IConfiguration>? addServices = null)
    {
        var app = new TestApp(modelDirectory, configure, addServices);
        await app.InitializeAsync();
        return app;
    }

    public JobsOptions Options => Services.GetRequiredService<IOptions<JobsOptions>>().Value;
    public PipelineHolder Pipelines => Services.GetRequiredService<PipelineHolder>();

    /// <summary>An HTTP request as the ASP.NET Core integration hands it to a function.</summary>
    public static HttpRequest Request(string method, string path, string? json = null, string contentType = "application/json",
        IDictionary<string, string>? headers = null)
    {
        var context = new DefaultHttpContext();
        context.Request.Method = method;
        context.Request.Scheme = "http";
        context.Request.Host = new HostString("localhost", 7071);
        context.Request.Path = path;
        if (json is not null)
        {
            context.Request.Body = new MemoryStream(Encoding.UTF8.GetBytes(json));
            context.Request.ContentType = contentType;
        }
        foreach (var (k, v) in headers ?? new Dictionary<string, string>()) context.Request.Headers[k] = v;
        return context.Request;
    }

    public async Task<(ContentResult Result, HttpResponse Response)> SubmitAsync(string json, IDictionary<string, string>? headers = null)
    {
        var req = Request("POST", "/api/generations", json, headers: headers);
        var result = (ContentResult)await Api.Submit(req, default);
        return (result, req.HttpContext.Response);
    }

    /// <summary>Submits a job (202 expected), runs the queue function on its message and answers the job resource.</summary>
    public async Task<JsonElement> RunJobAsync(string json)
    {
        var (submitted, _) = await SubmitAsync(json);
        Assert.Equal(202, submitted.StatusCode);
        await RunNextMessageAsync();
        return await JobAsync(ApiAnswers.IdOf(submitted));
    }

    /// <summary>
    /// A job long enough that a test which has seen its first progress still finds it running (with 40 steps a run once
    /// finished first in CI); tests that stop, cancel or take over the run pay nothing for the length.
    /// </summary>
    public async Task<string> SubmitLongJobAsync(int steps = 150)
    {
        var (submitted, _) = await SubmitAsync($$"""{"prompt": "x", "steps": {{steps}}, "seed": 3, "scheduler": "ddim"}""");
        return ApiAnswers.IdOf(submitted);
    }

    /// <summary>Loads the model, submits a long job and runs it until it has made progress: the run goes on in the returned task.</summary>
    public async Task<(string Id, Task<QueueMessage> Run)> StartLongJobAsync(int steps = 150)
    {
        await Pipelines.GetAsync();
        string id = await SubmitLongJobAsync(steps);
        var run = RunNextMessageAsync();
        await WaitForProgressAsync(id);
        return (id, run);
    }

    /// <summary>Polls the job until its progress is past <paramref name="above"/>, and answers the step it saw.</summary>
    public async Task<int> WaitForProgressAsync(string id, int above = 0)
    {
        for (int i = 0; i < 1200; i++)
        {
            var r = await GetAsync(id);
            if (r.StatusCode == 200 && ApiAnswers.StepOf(ApiAnswers.Body(r)) is var step && step > above) return step;
            await Task.Delay(25);
        }
        throw new TimeoutException($"job {id} made no progress past step {above}");
    }

    /// <summary>POST /api/generations as multipart/form-data, the parts made by HttpClient's own encoder.</summary>
    public async Task<(ContentResult Result, HttpResponse Response)> SubmitMultipartAsync(System.Net.Http.MultipartFormDataContent form,
        IDictionary<string, string>? headers = null)
    {
        var req = Request("POST", "/api/generations", headers: headers);
        var body = new MemoryStream();
        await form.CopyToAsync(body);
        body.Position = 0;
        req.Body = body;
        req.ContentLength = body.Length;
        req.ContentType = form.Headers.ContentType!.ToString();
        var result = (ContentResult)await Api.Submit(req, default);
        return (result, req.HttpContext.Response);
    }

    public async Task<ContentResult> GetAsync(string id) => (ContentResult)await Api.Get(Request("GET", $"/api/generations/{id}"), id, default);

    /// <summary>The job resource GET /api/generations/{id} answers.</summary>
    public async Task<JsonElement> JobAsync(string id) => ApiAnswers.Body(await GetAsync(id));

    /// <summary>The body GET /api/health answers.</summary>
    public async Task<JsonElement> HealthAsync() => ApiAnswers.Body((ContentResult)await Health.Run(Request("GET", "/api/health")));

    /// <summary>The PNG bytes a job stored as its (first) image.</summary>
    public async Task<byte[]> ImageBytesAsync(string id) => (await Images.GetBlobClient($"{id}.png").DownloadContentAsync()).Value.Content.ToArray();

    public async Task<ContentResult> CancelAsync(string id) => (ContentResult)await Api.Cancel(Request("POST", $"/api/generations/{id}/cancel"), id, default);

    /// <summary>Takes the next message off the queue (as the trigger would) and runs the queue function on it.</summary>
    public async Task<QueueMessage> RunNextMessageAsync(CancellationToken ct = default)
    {
        var message = (await Messages.ReceiveMessageAsync(TimeSpan.FromMinutes(5), ct)).Value
            ?? throw new InvalidOperationException("no message on the queue");
        await Queue.Process(message, ct);
        await Messages.DeleteMessageAsync(message.MessageId, message.PopReceipt, CancellationToken.None);
        return message;
    }

    /// <summary>Delivers the next webhook event on the queue (as its trigger would); false when none is visible.</summary>
    public async Task<bool> RunNextWebhookAsync(CancellationToken ct = default)
    {
        var message = (await WebhookMessages.ReceiveMessageAsync(TimeSpan.FromMinutes(1), ct)).Value;
        if (message is null) return false;
        await WebhookFunctions.Deliver(message.Body.ToString(), ct);
        await WebhookMessages.DeleteMessageAsync(message.MessageId, message.PopReceipt, CancellationToken.None);
        return true;
    }

    /// <summary>
    /// Runs the webhook side until it is quiet: waits for the attempts sent in the background, delivers each visible message as
    /// its trigger would, again until nothing is in flight or visible. How many queue messages it delivered.
    /// </summary>
    public async Task<int> DeliverWebhooksAsync()
    {
        var sender = Services.GetRequiredService<SdFunctions.Jobs.Webhooks.WebhookSender>();
        for (int handled = 0; ; handled++)
        {
            await sender.IdleAsync();
            if (!await RunNextWebhookAsync()) return handled;
        }
    }

    public async ValueTask DisposeAsync()
    {
        // Straight to Azurite, not through whatever proxy the test put in front of it.
        var queues = new QueueServiceClient(AzuriteFixture.ConnectionString);
        var blobs = new BlobServiceClient(AzuriteFixture.ConnectionString);
        await queues.GetQueueClient(Messages.Name).DeleteIfExistsAsync();
        await queues.GetQueueClient(Poison.Name).DeleteIfExistsAsync();
        await queues.GetQueueClient(WebhookMessages.Name).DeleteIfExistsAsync();
        await queues.GetQueueClient(WebhookMessages.Name + "-poison").DeleteIfExistsAsync();
        await blobs.GetBlobContainerClient(Images.Name).DeleteIfExistsAsync();
        await blobs.GetBlobContainerClient(Options.JobsContainer).DeleteIfExistsAsync();
        await Services.DisposeAsync();
    }
}

[CollectionDefinition(Name)]
public sealed class AzuriteCollection : ICollectionFixture<AzuriteFixture>
{
    public const string Name = "azurite";
}
