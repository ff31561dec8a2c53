using System.Net;
using System.Text.Json;
using Microsoft.AspNetCore.Mvc;
using SdFunctions.Jobs;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>The whole flow through the function classes on Azurite with the real pipeline on the tiny bundle.</summary>
[Collection(AzuriteCollection.Name)]
public class FlowTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public async Task SubmitQueueGeneratePollAndDownload()
    {
        await using var app = await TestApp.StartAsync();
        var (submitted, response) = await app.SubmitAsync("""{"prompt": "a lighthouse at dusk", "steps": 4, "seed": 42, "scheduler": "ddim"}""");

        Assert.Equal(202, submitted.StatusCode);
        var job = Body(submitted);
        string id = job.GetProperty("id").GetString()!;
        Assert.Equal("queued", job.GetProperty("status").GetString());
        Assert.Equal(42, job.GetProperty("input").GetProperty("seed").GetInt64());
        Assert.Equal($"http://localhost:7071/api/generations/{id}", response.Headers.Location.ToString());
        Assert.Equal("2", response.Headers.RetryAfter.ToString());

        // The message is really on the queue, and names the job.
        var peeked = (await app.Messages.PeekMessageAsync()).Value;
        Assert.Contains(id, peeked.Body.ToString());

        await app.RunNextMessageAsync();

        var done = await app.JobAsync(id);
        Assert.Equal("succeeded", done.GetProperty("status").GetString());
        Assert.Equal(1, done.GetProperty("attempt").GetInt32());
        var progress = done.GetProperty("progress");
        Assert.Equal(4, progress.GetProperty("total").GetInt32());
        Assert.Equal(4, progress.GetProperty("step").GetInt32());
        var result = done.GetProperty("output");
        Assert.Equal(256, result.GetProperty("width").GetInt32());
        Assert.Equal("sdref-tiny-sd", result.GetProperty("model").GetString());
        Assert.True(result.GetProperty("timings").GetProperty("denoiseSeconds").GetDouble() > 0);
        output.WriteLine($"timings: {result.GetProperty("timings").GetRawText()}");
        Assert.False(done.GetProperty("completedAt").ValueKind == JsonValueKind.Null);

        // imageUrl: a read-only SAS that works without any key.
        string url = result.GetProperty("imageUrl").GetString()!;
        Assert.Contains("sig=", url);
        Assert.Contains("sp=r", url);
        using var http = new HttpClient();
        byte[] viaSas = await http.GetByteArrayAsync(url);
        using (var image = Image.Load<Rgb24>(viaSas)) Assert.Equal((256, 256), (image.Width, image.Height));
        var delete = await http.DeleteAsync(url); // read-only: the SAS cannot remove the image
        Assert.Equal(HttpStatusCode.Forbidden, delete.StatusCode);

        // The image route serves the same PNG; the blob carries its metadata.
        var file = (FileContentResult)await app.Api.GetImage(TestApp.Request("GET", $"/api/generations/{id}/image"), id, default);
        Assert.Equal("image/png", file.ContentType);
        Assert.Equal(viaSas, file.FileContents);
        var metadata = (await app.Images.GetBlobClient($"{id}.png").GetPropertiesAsync()).Value;
        Assert.Equal("image/png", metadata.ContentType);
        Assert.Equal("42", metadata.Metadata["seed"]);
        Assert.Equal("4", metadata.Metadata["steps"]);
        Assert.Equal("ddim", metadata.Metadata["scheduler"]);

        // Same seed, same image.
        var (again, _) = await app.SubmitAsync("""{"prompt": "a lighthouse at dusk", "steps": 4, "seed": 42, "scheduler": "ddim"}""");
        string id2 = IdOf(again);
        Assert.NotEqual(id, id2);
        await app.RunNextMessageAsync();
        var file2 = (FileContentResult)await app.Api.GetImage(TestApp.Request("GET", $"/api/generations/{id2}/image"), id2, default);
        Assert.Equal(file.FileContents, file2.FileContents);
    }

    [Fact]
    public async Task AnAbsentSeedIsChosenAndReturned()
    {
        await using var app = await TestApp.StartAsync();
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "x"}""");
        var input = Body(submitted).GetProperty("input");
        Assert.InRange(input.GetProperty("seed").GetInt64(), 0, SdFunctions.Inference.Pipeline.GenerationRequest.MaxSeed);
        // Steps and guidance stay as sent (absent): they take the model's defaults when the job runs, recorded in its output.
        Assert.Equal(JsonValueKind.Null, input.GetProperty("steps").ValueKind);
        Assert.Equal(JsonValueKind.Null, input.GetProperty("guidanceScale").ValueKind);
    }

    [Fact]
    public async Task ImageBeforeSuccessIs409AndUnknownOrMalformedIdsAreRefused()
    {
        await using var app = await TestApp.StartAsync();
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 1}""");
        string id = IdOf(submitted);

        var early = (ContentResult)await app.Api.GetImage(TestApp.Request("GET", $"/api/generations/{id}/image"), id, default);
        AssertProblem(early, 409, ProblemTypes.NotFinished);

        string unknown = Guid.NewGuid().ToString("N");
        AssertProblem(await app.GetAsync(unknown), 404, ProblemTypes.NotFound);
        AssertProblem((ContentResult)await app.Api.GetImage(TestApp.Request("GET", "/x"), unknown, default), 404, ProblemTypes.NotFound);
        AssertProblem(await app.CancelAsync(unknown), 404, ProblemTypes.NotFound);
        // One grammar: 32 lower-case hex digits. Upper case and padding are malformed (400), not unknown (404).
        foreach (string bad in new[] { "not-an-id", "1234", "../jobs/x", Guid.NewGuid().ToString() /* dashed form */,
            unknown.ToUpperInvariant(), $" {unknown}", $"{unknown} ", $"{{{unknown}}}" })
        {
            AssertProblem(await app.GetAsync(bad), 400, ProblemTypes.MalformedId);
            AssertProblem((ContentResult)await app.Api.GetImage(TestApp.Request("GET", "/x"), bad, default), 400, ProblemTypes.MalformedId);
            AssertProblem(await app.CancelAsync(bad), 400, ProblemTypes.MalformedId);
        }
    }

    [Fact]
    public async Task HealthReportsTheRuntimeAndWhetherTheModelIsLoaded()
    {
        await using var app = await TestApp.StartAsync();
        var before = await app.HealthAsync();
        Assert.False(before.GetProperty("modelLoaded").GetBoolean());
        Assert.Matches(@"^\d+\.\d+\.\d+", before.GetProperty("onnxRuntime").GetString()!);
        Assert.Equal("256x256", before.GetProperty("imageSize").GetString());
        Assert.True(before.GetProperty("cpu").TryGetProperty("avx512Vnni", out _));
        Assert.False(string.IsNullOrEmpty(before.GetProperty("instanceId").GetString()));
        Assert.DoesNotContain("UseDevelopmentStorage", before.GetRawText());

        await app.SubmitAsync("""{"prompt": "x", "steps": 1}""");
        await app.RunNextMessageAsync();
        var after = await app.HealthAsync();
        Assert.True(after.GetProperty("modelLoaded").GetBoolean());
        Assert.Equal("sdref-tiny-sd", after.GetProperty("model").GetString());
        Assert.Equal(["pndm", "ddim", "euler", "euler-a", "lms", "dpmpp-2m", "lcm"], after.GetProperty("schedulers").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(["full"], after.GetProperty("decoders").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(50, after.GetProperty("defaults").GetProperty("steps").GetInt32());
        Assert.Equal(2, after.GetProperty("uNetBatch").GetInt32());
    }

    [Fact]
    public async Task PndmProgressCountsItsExtraIterationAndShowsTheStepsAsked()
    {
        await using var app = await TestApp.StartAsync();
        var progress = (await app.RunJobAsync("""{"prompt": "x", "steps": 2, "scheduler": "pndm"}""")).GetProperty("progress");
        // diffusers' PNDM runs steps + 1 iterations (its first PLMS step evaluates the UNet twice): total counts them, steps is what was asked.
        Assert.Equal((3, 3, 2), (progress.GetProperty("step").GetInt32(), progress.GetProperty("total").GetInt32(), progress.GetProperty("steps").GetInt32()));
    }

}
