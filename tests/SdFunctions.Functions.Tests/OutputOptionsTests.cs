using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Mvc;
using SdFunctions.Jobs;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.PixelFormats;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>Several images per job, output formats and their parameters, usage for billing, and a queued job's position.</summary>
[Collection(AzuriteCollection.Name)]
public class OutputOptionsTests
{
    private static async Task<FileContentResult> Image(TestApp app, string id, string? index = null)
    {
        var req = TestApp.Request("GET", $"/api/generations/{id}/image");
        if (index is not null) req.QueryString = new Microsoft.AspNetCore.Http.QueryString($"?index={index}");
        return (FileContentResult)await app.Api.GetImage(req, id, default);
    }

    [Fact]
    public async Task NImagesHaveSeedsSeedPlusKAndEachIsServed()
    {
        await using var app = await TestApp.StartAsync();
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "a lighthouse", "steps": 3, "seed": 100, "scheduler": "ddim", "n": 3}""");
        string id = IdOf(submitted);
        await app.RunNextMessageAsync();
        var done = await app.JobAsync(id);
        Assert.Equal("succeeded", done.GetProperty("status").GetString());
        var output = done.GetProperty("output");
        var images = output.GetProperty("images").EnumerateArray().ToList();
        Assert.Equal([100L, 101L, 102L], images.Select(i => i.GetProperty("seed").GetInt64()));
        Assert.Equal([0, 1, 2], images.Select(i => i.GetProperty("index").GetInt32()));
        Assert.All(images, i => Assert.Contains("sig=", i.GetProperty("url").GetString()));
        Assert.Equal(images[0].GetProperty("url").GetString(), output.GetProperty("imageUrl").GetString());
        Assert.Equal(9, output.GetProperty("uNetCalls").GetInt32()); // 3 images × 3 steps, batch 2
        Assert.Equal((9, 9), (done.GetProperty("progress").GetProperty("step").GetInt32(), done.GetProperty("progress").GetProperty("total").GetInt32()));

        var files = new List<byte[]>();
        for (int k = 0; k < 3; k++) files.Add((await Image(app, id, k.ToString())).FileContents);
        Assert.Equal(files[0], (await Image(app, id)).FileContents); // no index: the first
        Assert.Equal(3, files.Distinct(new BytesComparer()).Count());

        // Image 2 of this job is the image of a one-image job with seed 102.
        var (single, _) = await app.SubmitAsync("""{"prompt": "a lighthouse", "steps": 3, "seed": 102, "scheduler": "ddim"}""");
        string singleId = IdOf(single);
        await app.RunNextMessageAsync();
        Assert.Equal(files[2], (await Image(app, singleId)).FileContents);

        foreach (string bad in new[] { "3", "-1", "x", "1.0" })
        {
            var req = TestApp.Request("GET", $"/api/generations/{id}/image");
            req.QueryString = new Microsoft.AspNetCore.Http.QueryString($"?index={bad}");
            AssertProblem((ContentResult)await app.Api.GetImage(req, id, default), 400, ProblemTypes.Validation);
        }
    }

    [Theory]
    [InlineData("webp", 80, "image/webp", "RIFF")]
    [InlineData("jpeg", 95, "image/jpeg", "\xFF\xD8\xFF")]
    [InlineData("png", null, "image/png", "\x89PNG")]
    public async Task FormatsHaveTheirContentTypeOnBlobsAndRoutes(string format, int? quality, string contentType, string magic)
    {
        await using var app = await TestApp.StartAsync();
        string q = quality is null ? "" : $", \"quality\": {quality}";
        var (submitted, _) = await app.SubmitAsync($$"""{"prompt": "a red barn, \"oil\" painting", "negativePrompt": "blurry", "steps": 2, "seed": 7, "scheduler": "euler", "outputFormat": "{{format}}"{{q}}}""");
        var input = Body(submitted).GetProperty("input");
        Assert.Equal(format, input.GetProperty("outputFormat").GetString());
        if (quality is null) Assert.False(input.TryGetProperty("quality", out _));
        else Assert.Equal(quality, input.GetProperty("quality").GetInt32());
        string id = IdOf(submitted);
        await app.RunNextMessageAsync();

        var file = await Image(app, id);
        Assert.Equal(contentType, file.ContentType);
        Assert.Equal($"{id}.{(format == "jpeg" ? "jpg" : format)}", file.FileDownloadName);
        Assert.StartsWith(magic, Encoding.Latin1.GetString(file.FileContents, 0, magic.Length));
        using (var decoded = SixLabors.ImageSharp.Image.Load<Rgb24>(file.FileContents)) Assert.Equal((256, 256), (decoded.Width, decoded.Height));
        var blob = (await app.Images.GetBlobClient(ImageStore.BlobName(id, 0, format)).GetPropertiesAsync()).Value;
        Assert.Equal(contentType, blob.ContentType);
        Assert.Equal("a%20red%20barn%2C%20%22oil%22%20painting", blob.Metadata["prompt"]);
        Assert.Equal(("blurry", "7", "euler", "2", "256x256"), (blob.Metadata["negativeprompt"], blob.Metadata["seed"], blob.Metadata["scheduler"], blob.Metadata["steps"], blob.Metadata["size"]));
        Assert.Equal(contentType, (await app.JobAsync(id)).GetProperty("output").GetProperty("contentType").GetString());

        if (format == "png")
        {
            // The tEXt chunk SD tools read: "parameters" = prompt, negative prompt line, then the settings line.
            using var png = SixLabors.ImageSharp.Image.Load(file.FileContents);
            var text = Assert.Single(png.Metadata.GetPngMetadata().TextData, t => t.Keyword == "parameters").Value;
            Assert.Equal("a red barn, \"oil\" painting\nNegative prompt: blurry\nSteps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 7, Size: 256x256, Model: sdref-tiny-sd", text);
            Assert.Contains("tEXtparameters", Encoding.Latin1.GetString(file.FileContents)); // a tEXt chunk, not zTXt/iTXt
        }
    }

    public static TheoryData<string, string> BadOutputBodies() => new()
    {
        { """{"prompt": "x", "n": 0}""", "n" },
        { """{"prompt": "x", "n": 5}""", "n" },
        { """{"prompt": "x", "n": 2, "seed": 9007199254740991}""", "seed" },
        { """{"prompt": "x", "outputFormat": "gif"}""", "outputFormat" },
        { """{"prompt": "x", "quality": 80}""", "quality" },
        { """{"prompt": "x", "outputFormat": "png", "quality": 80}""", "quality" },
        { """{"prompt": "x", "outputFormat": "jpeg", "quality": 0}""", "quality" },
        { """{"prompt": "x", "outputFormat": "webp", "quality": 101}""", "quality" },
    };

    [Theory, MemberData(nameof(BadOutputBodies))]
    public async Task BadOutputOptionsAreNamed(string body, string field)
    {
        await using var app = await TestApp.StartAsync();
        AssertFieldRefused((await app.SubmitAsync(body)).Result, field);
    }

    [Fact]
    public async Task UsageIsRecordedAndOnlyOurFailuresAreNotBillable()
    {
        await using var app = await TestApp.StartAsync();
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 3, "scheduler": "ddim", "n": 2}""");
        string id = IdOf(submitted);
        Assert.Equal(JsonValueKind.Null, Body(submitted).GetProperty("usage").ValueKind);
        await app.RunNextMessageAsync();
        var usage = (await app.JobAsync(id)).GetProperty("usage");
        Assert.True(usage.GetProperty("billable").GetBoolean());
        Assert.Equal((6, 2), (usage.GetProperty("uNetCalls").GetInt32(), usage.GetProperty("images").GetInt32()));
        Assert.True(usage.GetProperty("cpuSeconds").GetDouble() > 0);
        Assert.True(usage.GetProperty("wallSeconds").GetDouble() >= usage.GetProperty("stageSeconds").GetProperty("denoise").GetDouble());
        Assert.Equal("sdref-tiny-sd", usage.GetProperty("model").GetString());
        Assert.Equal(JobUsage.CurrentInstanceId, usage.GetProperty("instanceId").GetString());

        // A server-side failure (the model cannot be loaded) is not billable.
        await using var broken = await TestApp.StartAsync(TestApp.UnloadableModel,
            s => s["Jobs:MaxDequeueCount"] = "1");
        var (doomed, _) = await broken.SubmitAsync("""{"prompt": "x", "steps": 2}""");
        string doomedId = IdOf(doomed);
        await broken.RunNextMessageAsync();
        var failed = Body(await broken.GetAsync(doomedId));
        Assert.Equal("failed", failed.GetProperty("status").GetString());
        Assert.False(failed.GetProperty("usage").GetProperty("billable").GetBoolean());
    }

    [Fact]
    public async Task AQueuedJobShowsAboutHowManyAreAheadOfIt()
    {
        await using var app = await TestApp.StartAsync();
        var ids = new List<string>();
        for (int i = 0; i < 3; i++)
        {
            ids.Add(IdOf((await app.SubmitAsync("""{"prompt": "x", "steps": 1}""")).Result));
            await Task.Delay(GenerationService.QueuePositionRefresh + TimeSpan.FromMilliseconds(200)); // each submit reads the queue afresh
        }
        var ahead = new List<int>();
        foreach (string id in ids) ahead.Add((await app.JobAsync(id)).GetProperty("queue").GetProperty("approximateAhead").GetInt32());
        Assert.Equal([0, 1, 2], ahead);
        await app.RunNextMessageAsync();
        Assert.False((await app.JobAsync(ids[0])).TryGetProperty("queue", out _)); // not queued any more
    }

    private sealed class BytesComparer : IEqualityComparer<byte[]>
    {
        public bool Equals(byte[]? a, byte[]? b) => a.AsSpan().SequenceEqual(b);
        public int GetHashCode(byte[] bytes) => bytes.Length;
    }
}
