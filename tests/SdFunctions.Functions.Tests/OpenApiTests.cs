using System.Reflection;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Extensions.DependencyInjection;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// The OpenAPI document cannot drift from the app: it is valid OpenAPI 3.1, it lists exactly the app's HTTP functions and
/// problem types, and the real answers of every route — each success and each problem it documents — validate against it.
/// The one documented answer not made here is the host's own 401 (the end-to-end tier checks it under the real host).
/// </summary>
[Collection(AzuriteCollection.Name)]
public class OpenApiTests
{
    private static readonly OpenApiContract Contract = OpenApiContract.Document;
    private const string Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// <summary>What each test saw per (path, method): the statuses, for the coverage check at the end of each.</summary>
    private readonly Dictionary<(string Path, string Method), HashSet<string>> _seen = [];
    private readonly HashSet<string> _problemTypes = [];

    private JsonElement Check(string path, string method, IActionResult result, HttpRequest req)
    {
        var body = Contract.AssertResponse(path, method, result, req.HttpContext.Response);
        int status = result is ContentResult c ? c.StatusCode ?? 200 : 200;
        if (!_seen.TryGetValue((path, method), out var statuses)) _seen[(path, method)] = statuses = [];
        statuses.Add(status.ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (body.ValueKind == JsonValueKind.Object && body.TryGetProperty("type", out var type) && status >= 400) _problemTypes.Add(type.GetString()!);
        if (body.ValueKind == JsonValueKind.Object && body.TryGetProperty("error", out var error) && error.ValueKind == JsonValueKind.Object)
            _problemTypes.Add(error.GetProperty("type").GetString()!);
        return body;
    }

    /// <summary>Every status the document lists for the operation was answered here (but the host's 401), and the route's problem types.</summary>
    private void AssertEveryDocumentedStatusSeen(string path, string method)
    {
        var documented = Contract.DocumentedResponses().Where(r => r.Path == path && r.Method == method && r.Status != "401").Select(r => r.Status).Order();
        Assert.Equal(documented, _seen.GetValueOrDefault((path, method), []).Order());
        Assert.Equal(ProblemsByRoute[$"{method} {path}"].Order(), _problemTypes.Order());
    }

    /// <summary>The problem types each route test must see (in answers, or in a job's error), no more and no fewer.</summary>
    private static readonly Dictionary<string, string[]> ProblemsByRoute = new()
    {
        ["post /generations"] = [ProblemTypes.Validation, ProblemTypes.MalformedJson, ProblemTypes.UnsupportedMediaType, ProblemTypes.RequestTooLarge,
            ProblemTypes.IdempotencyConflict, ProblemTypes.InternalError, ProblemTypes.ServiceUnavailable],
        ["get /generations/{id}"] = [ProblemTypes.GenerationFailed, ProblemTypes.MalformedId, ProblemTypes.NotFound, ProblemTypes.InternalError, ProblemTypes.ServiceUnavailable],
        ["get /generations/{id}/image"] = [ProblemTypes.NotFinished, ProblemTypes.Validation, ProblemTypes.MalformedId, ProblemTypes.NotFound,
            ProblemTypes.InternalError, ProblemTypes.ServiceUnavailable],
        ["post /generations/{id}/cancel"] = [ProblemTypes.AlreadyFinished, ProblemTypes.MalformedId, ProblemTypes.NotFound, ProblemTypes.InternalError,
            ProblemTypes.ServiceUnavailable],
        ["get /health"] = [],
        ["get /openapi.json"] = [],
        ["get /playground"] = [],
        ["get /playground/{file}"] = [ProblemTypes.NotFound],
    };

    [Fact]
    public void TheDocumentIsValidOpenApi31()
    {
        var (document, diagnostic) = Microsoft.OpenApi.OpenApiDocument.Parse(File.ReadAllText(OpenApiContract.DocumentPath), "json");
        Assert.Empty(diagnostic!.Errors.Select(e => $"{e.Pointer}: {e.Message}"));
        Assert.Equal(Microsoft.OpenApi.OpenApiSpecVersion.OpenApi3_1, diagnostic.SpecificationVersion);
        var errors = Microsoft.OpenApi.OpenApiElementExtensions.Validate(document!, Microsoft.OpenApi.ValidationRuleSet.GetDefaultRuleSet());
        Assert.Empty(errors.Select(e => $"{e.Pointer}: {e.Message}"));
    }

    [Fact]
    public void TheDocumentListsExactlyTheAppsHttpFunctions()
    {
        var functions =
            from type in typeof(GenerationsApi).Assembly.GetTypes()
            from method in type.GetMethods()
            let function = method.GetCustomAttribute<Microsoft.Azure.Functions.Worker.FunctionAttribute>()
            from parameter in method.GetParameters()
            let trigger = parameter.GetCustomAttribute<Microsoft.Azure.Functions.Worker.HttpTriggerAttribute>()
            where function is not null && trigger is not null
            from verb in trigger.Methods!
            select (Path: "/" + trigger.Route, Method: verb, Name: function.Name, Anonymous: trigger.AuthLevel == Microsoft.Azure.Functions.Worker.AuthorizationLevel.Anonymous);
        var documented =
            from path in Contract.Root.GetProperty("paths").EnumerateObject()
            from operation in path.Value.EnumerateObject()
            where operation.Name != "parameters"
            select (Path: path.Name, Method: operation.Name, Name: operation.Value.GetProperty("operationId").GetString()!,
                Anonymous: operation.Value.TryGetProperty("security", out var s) && s.GetArrayLength() == 0);
        Assert.Equal(functions.Order(), documented.Order());
        // Keyed routes document the host's 401; anonymous ones do not.
        foreach (var (path, method, _, anonymous) in documented)
            Assert.Equal(!anonymous, Contract.Operation(path, method).GetProperty("responses").TryGetProperty("401", out _));
    }

    [Fact]
    public void TheDocumentsNameListsAreTheCatalogs()
    {
        var schemas = Contract.Root.GetProperty("components").GetProperty("schemas");
        string[] Enum(string schema) => [.. schemas.GetProperty(schema).GetProperty("enum").EnumerateArray().Select(e => e.GetString()!)];
        Assert.Equal(SdFunctions.Inference.Schedulers.SchedulerCatalog.Names, Enum("Scheduler"));
        Assert.Equal(SdFunctions.Inference.Bundle.DecoderComponent.Names, Enum("Decoder"));
        Assert.Equal(SdFunctions.Inference.Pipeline.DeepCacheSchedule.Names, Enum("CacheSchedule"));
        Assert.Equal(SdFunctions.Inference.Pipeline.ImageFile.Formats, Enum("ImageFormat"));
        Assert.Equal(SdFunctions.Jobs.Webhooks.Events.All, Enum("WebhookEvent"));
        Assert.Equal(System.Enum.GetNames<JobStatus>().Select(n => n.ToLowerInvariant()), Enum("JobStatus"));
    }

    [Fact]
    public void TheDocumentListsExactlyTheProblemTypes()
    {
        var constants = typeof(ProblemTypes).GetFields(BindingFlags.Public | BindingFlags.Static).Select(f => (string)f.GetValue(null)!);
        Assert.Equal(constants.Order(), Contract.ProblemTypes().Order());
    }

    [Fact]
    public async Task TheServedDocumentIsTheRepositorysAndAnswersAnonymously()
    {
        var req = TestApp.Request("GET", "/api/openapi.json");
        var result = new OpenApiApi().Run(req);
        Check("/openapi.json", "get", result, req);
        Assert.Equal(await File.ReadAllBytesAsync(OpenApiContract.DocumentPath), ((FileContentResult)result).FileContents);
        AssertEveryDocumentedStatusSeen("/openapi.json", "get");
    }

    [Fact]
    public async Task HealthBeforeAndAfterTheModelLoadsMatches()
    {
        await using var app = await TestApp.StartAsync();
        var req = TestApp.Request("GET", "/api/health");
        Assert.False(Check("/health", "get", await app.Health.Run(req), req).GetProperty("modelLoaded").GetBoolean());
        await app.Pipelines.GetAsync();
        req = TestApp.Request("GET", "/api/health");
        Assert.True(Check("/health", "get", await app.Health.Run(req), req).GetProperty("modelLoaded").GetBoolean());
        await using var broken = await TestApp.StartAsync();
        await broken.Messages.DeleteAsync(); // the triggers' queue is gone: unavailable
        req = TestApp.Request("GET", "/api/health");
        Assert.Equal("unavailable", Check("/health", "get", await broken.Health.Run(req), req).GetProperty("checks").GetProperty("queue").GetProperty("status").GetString());
        AssertEveryDocumentedStatusSeen("/health", "get");
    }

    [Fact]
    public async Task SubmitAnswersMatch()
    {
        await using var app = await TestApp.StartAsync(configure: s => { s["Webhooks:SigningSecret"] = Secret; s["Webhooks:AllowHttpLoopback"] = "true"; });
        async Task<JsonElement> Submit(string json, string contentType = "application/json", Dictionary<string, string>? headers = null)
        {
            var req = TestApp.Request("POST", "/api/generations", json, contentType, headers);
            var body = Check("/generations", "post", await app.Api.Submit(req, default), req);
            return body;
        }

        string[] accepted =
        [
            """{"prompt": "a lighthouse"}""",
            """{"prompt": "a lighthouse", "negativePrompt": "fog", "steps": 2, "guidanceScale": 6.5, "seed": 9, "scheduler": "euler-a", "decoder": "full", "tiledDecode": true, "n": 2, "outputFormat": "webp", "quality": 80}""",
            """{"prompt": "a lighthouse", "webhook": {"url": "http://127.0.0.1:9/hook", "events": ["started", "completed"]}}""",
            $$"""{"prompt": "a watercolour", "strength": 0.5, "image": "data:image/png;base64,{{Convert.ToBase64String(ImageToImageServiceTests.Picture(64, 48))}}"}""",
        ];
        foreach (string json in accepted)
        {
            // What the tests send as valid requests is valid by the document too, and the answer matches.
            Contract.AssertValid("/components/schemas/GenerationRequest", JsonDocument.Parse(json).RootElement, json[..Math.Min(60, json.Length)]);
            Assert.Equal("queued", (await Submit(json)).GetProperty("status").GetString());
        }
        Assert.Equal(ProblemTypes.Validation, (await Submit("""{"prompt": "", "width": 1024}""")).GetProperty("type").GetString());
        Assert.Equal(ProblemTypes.MalformedJson, (await Submit("{not json")).GetProperty("type").GetString());
        Assert.Equal(ProblemTypes.UnsupportedMediaType, (await Submit("""{"prompt": "x"}""", "text/json")).GetProperty("type").GetString());
        Assert.Equal(ProblemTypes.RequestTooLarge, (await Submit($$"""{"prompt": "{{new string('a', 70_000)}}"}""")).GetProperty("type").GetString());
        var key = new Dictionary<string, string> { ["Idempotency-Key"] = "contract" };
        await Submit("""{"prompt": "one"}""", headers: key);
        Assert.Equal(ProblemTypes.IdempotencyConflict, (await Submit("""{"prompt": "another"}""", headers: key)).GetProperty("type").GetString());
        // A claim that does not read back (a corrupt blob): the 500 names only a correlation id.
        await app.Services.GetRequiredService<Azure.Storage.Blobs.BlobServiceClient>().GetBlobContainerClient(app.Options.JobsContainer)
            .GetBlobClient($"idempotency/{JobStore.Hash(CallerScope.From(null, null) + "\n" + "broken")}.json").UploadAsync(BinaryData.FromString("{"), overwrite: true);
        var broken = await Submit("""{"prompt": "x"}""", headers: new() { ["Idempotency-Key"] = "broken" });
        Assert.Equal(ProblemTypes.InternalError, broken.GetProperty("type").GetString());

        await using (var down = new TestApp(configure: Down))
        {
            var req = TestApp.Request("POST", "/api/generations", """{"prompt": "x"}""");
            Check("/generations", "post", await down.Api.Submit(req, default), req);
        }
        AssertEveryDocumentedStatusSeen("/generations", "post");
    }

    [Fact]
    public async Task JobAnswersMatchInEveryState()
    {
        await using var app = await TestApp.StartAsync(configure: s => { s["Webhooks:SigningSecret"] = Secret; s["Webhooks:AllowHttpLoopback"] = "true"; });
        async Task<JsonElement> Get(string id)
        {
            var req = TestApp.Request("GET", $"/api/generations/{id}");
            return Check("/generations/{id}", "get", await app.Api.Get(req, id, default), req);
        }

        string webhooked = IdOf((await app.SubmitAsync("""{"prompt": "a", "steps": 2, "n": 2, "outputFormat": "jpeg", "webhook": {"url": "http://127.0.0.1:9/hook"}}""")).Result);
        string picture = Body((await app.SubmitAsync($$"""{"prompt": "b", "steps": 2, "strength": 0.5, "image": "data:image/png;base64,{{Convert.ToBase64String(ImageToImageServiceTests.Picture(64, 64))}}"}""")).Result).GetProperty("id").GetString()!;
        string poisoned = IdOf((await app.SubmitAsync("""{"prompt": "c", "steps": 2}""")).Result);
        var queued = await Get(webhooked);
        Assert.Equal("queued", queued.GetProperty("status").GetString());

        await app.RunNextMessageAsync();
        await app.DeliverWebhooksAsync(); // refused port 9: retried later, so the delivery stays pending
        var done = await Get(webhooked);
        Assert.Equal(("succeeded", 2), (done.GetProperty("status").GetString(), done.GetProperty("output").GetProperty("images").GetArrayLength()));
        Assert.Single(done.GetProperty("webhooks").EnumerateArray());
        await app.RunNextMessageAsync();
        Assert.True((await Get(picture)).GetProperty("input").TryGetProperty("image", out _));
        // Its retries ran out: the poison function fails it, with the generation-failed problem in error.
        var message = (await app.Messages.ReceiveMessageAsync()).Value;
        await app.Queue.Poison(message.Body.ToString(), default);
        var failed = await Get(poisoned);
        Assert.Equal((ProblemTypes.GenerationFailed, false), (failed.GetProperty("error").GetProperty("type").GetString(), failed.GetProperty("usage").GetProperty("billable").GetBoolean()));

        Assert.Equal(ProblemTypes.MalformedId, (await Get("NOT-AN-ID")).GetProperty("type").GetString());
        Assert.Equal(ProblemTypes.NotFound, (await Get(JobIds.New())).GetProperty("type").GetString());
        Assert.Equal(ProblemTypes.InternalError, (await Get(await CorruptRecordAsync(app))).GetProperty("type").GetString());
        await using (var down = new TestApp(configure: Down))
        {
            var req = TestApp.Request("GET", $"/api/generations/{poisoned}");
            Check("/generations/{id}", "get", await down.Api.Get(req, poisoned, default), req);
        }
        AssertEveryDocumentedStatusSeen("/generations/{id}", "get");
        // A webhook's body is the job resource: the document's webhook says so.
        Assert.EndsWith("/components/schemas/Job", Contract.Operation("job", "post", webhook: true)
            .GetProperty("requestBody").GetProperty("content").GetProperty("application/json").GetProperty("schema").GetProperty("$ref").GetString());
    }

    [Fact]
    public async Task ImageAnswersMatchForEveryFormat()
    {
        await using var app = await TestApp.StartAsync();
        async Task<IActionResult> Image(string id, string? index = null)
        {
            var req = TestApp.Request("GET", $"/api/generations/{id}/image");
            if (index is not null) req.QueryString = new QueryString($"?index={index}");
            var result = await app.Api.GetImage(req, id, default);
            Check("/generations/{id}/image", "get", result, req);
            return result;
        }

        var ids = new List<string>();
        foreach (string format in new[] { "png", "webp", "jpeg" })
        {
            ids.Add(IdOf((await app.SubmitAsync($$"""{"prompt": "x", "steps": 1, "outputFormat": "{{format}}"}""")).Result));
            await app.RunNextMessageAsync();
            var file = (FileContentResult)await Image(ids[^1]);
            Assert.Equal($"image/{format}", file.ContentType);
            Assert.Equal(format, SixLabors.ImageSharp.Image.DetectFormat(file.FileContents).Name.ToLowerInvariant());
        }
        string queued = IdOf((await app.SubmitAsync("""{"prompt": "x", "steps": 1}""")).Result);
        Assert.Equal(ProblemTypes.NotFinished, Body((ContentResult)await Image(queued)).GetProperty("type").GetString());
        Assert.Equal(ProblemTypes.Validation, Body((ContentResult)await Image(ids[0], "1")).GetProperty("type").GetString());
        Assert.Equal(ProblemTypes.Validation, Body((ContentResult)await Image(ids[0], "-1")).GetProperty("type").GetString());
        Assert.Equal(ProblemTypes.MalformedId, Body((ContentResult)await Image("x")).GetProperty("type").GetString());
        Assert.Equal(ProblemTypes.NotFound, Body((ContentResult)await Image(JobIds.New())).GetProperty("type").GetString());
        Assert.Equal(ProblemTypes.InternalError, Body((ContentResult)await Image(await CorruptRecordAsync(app))).GetProperty("type").GetString());
        await using (var down = new TestApp(configure: Down))
        {
            var req = TestApp.Request("GET", $"/api/generations/{queued}/image");
            Check("/generations/{id}/image", "get", await down.Api.GetImage(req, queued, default), req);
        }
        AssertEveryDocumentedStatusSeen("/generations/{id}/image", "get");
    }

    [Fact]
    public async Task CancelAnswersMatch()
    {
        await using var app = await TestApp.StartAsync();
        async Task<JsonElement> Cancel(string id)
        {
            var req = TestApp.Request("POST", $"/api/generations/{id}/cancel");
            return Check("/generations/{id}/cancel", "post", await app.Api.Cancel(req, id, default), req);
        }

        string queued = IdOf((await app.SubmitAsync("""{"prompt": "x", "steps": 2}""")).Result);
        Assert.Equal("canceled", (await Cancel(queued)).GetProperty("status").GetString());
        Assert.Equal(ProblemTypes.AlreadyFinished, (await Cancel(queued)).GetProperty("type").GetString());
        await app.RunNextMessageAsync(); // the canceled job's message: nothing runs

        var (running, worker) = await app.StartLongJobAsync();
        Assert.Equal("running", (await Cancel(running)).GetProperty("status").GetString()); // 202: it stops at its next check
        await worker;

        Assert.Equal(ProblemTypes.MalformedId, (await Cancel("0")).GetProperty("type").GetString());
        Assert.Equal(ProblemTypes.NotFound, (await Cancel(JobIds.New())).GetProperty("type").GetString());
        Assert.Equal(ProblemTypes.InternalError, (await Cancel(await CorruptRecordAsync(app))).GetProperty("type").GetString());
        await using (var down = new TestApp(configure: Down))
        {
            var req = TestApp.Request("POST", $"/api/generations/{queued}/cancel");
            Check("/generations/{id}/cancel", "post", await down.Api.Cancel(req, queued, default), req);
        }
        AssertEveryDocumentedStatusSeen("/generations/{id}/cancel", "post");
    }

    [Fact]
    public void ThePlaygroundPageMatches()
    {
        var req = TestApp.Request("GET", "/api/playground");
        Check("/playground", "get", new PlaygroundApi().Page(req), req);
        AssertEveryDocumentedStatusSeen("/playground", "get");
    }

    [Fact]
    public void ThePlaygroundsFilesAndTheirProblemMatch()
    {
        var files = Contract.Operation("/playground/{file}", "get").GetProperty("parameters")[0].GetProperty("schema").GetProperty("enum");
        foreach (string file in files.EnumerateArray().Select(f => f.GetString()!))
        {
            var req = TestApp.Request("GET", $"/api/playground/{file}");
            Check("/playground/{file}", "get", new PlaygroundApi().Asset(req, file), req);
        }
        foreach (string missing in new[] { "index.html", "nothing.js" }) // the page is served at /playground only
        {
            var req = TestApp.Request("GET", $"/api/playground/{missing}");
            Assert.Equal(404, Check("/playground/{file}", "get", new PlaygroundApi().Asset(req, missing), req).GetProperty("status").GetInt32());
        }
        AssertEveryDocumentedStatusSeen("/playground/{file}", "get");
    }

    /// <summary>Between them the route tests answer every problem type there is.</summary>
    [Fact]
    public void EveryProblemTypeIsAnsweredByARouteTest()
    {
        var constants = typeof(ProblemTypes).GetFields(BindingFlags.Public | BindingFlags.Static).Select(f => (string)f.GetValue(null)!);
        Assert.Equal(constants.Order(), ProblemsByRoute.Values.SelectMany(v => v).Distinct().Order());
    }

    /// <summary>Storage that refuses every connection: each route's 503.</summary>
    private static void Down(Dictionary<string, string?> s)
    {
        s["JobsStorage"] = OutageTests.Unreachable;
        s["Jobs:StorageMaxRetries"] = "1";
        s["Jobs:StorageRetryDelay"] = "00:00:00.050";
    }

    /// <summary>A job record that no longer parses (a damaged blob): what the 500 internal-error answers look like.</summary>
    private static async Task<string> CorruptRecordAsync(TestApp app)
    {
        string id = JobIds.New();
        await app.Services.GetRequiredService<Azure.Storage.Blobs.BlobServiceClient>().GetBlobContainerClient(app.Options.JobsContainer)
            .GetBlobClient($"jobs/{id}.json").UploadAsync(BinaryData.FromString("{\"id\": "), overwrite: true);
        return id;
    }
}
