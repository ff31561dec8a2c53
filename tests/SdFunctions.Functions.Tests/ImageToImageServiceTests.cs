using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using SdFunctions.Jobs;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>Image-to-image through the API: a data URI in the JSON body or a multipart image part, stored with the job, run by the worker.</summary>
[Collection(AzuriteCollection.Name)]
public class ImageToImageServiceTests
{
    /// <summary>A picture with some structure (gradients), encoded as the format asks.</summary>
    internal static byte[] Picture(int width, int height, string format = "png")
    {
        using var image = new Image<Rgb24>(width, height);
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++) image[x, y] = new Rgb24((byte)(x * 255 / width), (byte)(y * 255 / height), 128);
        using var stream = new MemoryStream();
        if (format == "jpeg") image.SaveAsJpeg(stream);
        else if (format == "gif") image.SaveAsGif(stream);
        else image.SaveAsPng(stream);
        return stream.ToArray();
    }

    private static string DataUri(byte[] bytes, string type = "image/png") => $"data:{type};base64,{Convert.ToBase64String(bytes)}";

    [Fact]
    public async Task ADataUriJobIsStoredWithItsPictureAndRunsTheLastStepsOnly()
    {
        await using var app = await TestApp.StartAsync();
        byte[] png = Picture(256, 256);
        var (submitted, _) = await app.SubmitAsync($$"""{"prompt": "a watercolour of the same", "steps": 5, "seed": 3, "scheduler": "ddim", "image": "{{DataUri(png)}}"}""");
        Assert.Equal(202, submitted.StatusCode);
        var input = Body(submitted).GetProperty("input");
        string id = IdOf(submitted);
        var image = input.GetProperty("image");
        Assert.Equal("image/png", image.GetProperty("mediaType").GetString());
        Assert.Equal((256, 256), (image.GetProperty("width").GetInt32(), image.GetProperty("height").GetInt32()));
        Assert.Equal(png.Length, image.GetProperty("bytes").GetInt64());
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(png)), image.GetProperty("sha256").GetString());
        Assert.Equal(0.8, input.GetProperty("strength").GetDouble()); // diffusers' default
        Assert.Equal(png, (await app.Store.DownloadInputImageAsync(id, default))!.ToArray()); // kept for any delivery

        await app.RunNextMessageAsync();
        var done = await app.JobAsync(id);
        Assert.Equal("succeeded", done.GetProperty("status").GetString());
        Assert.Equal(4, done.GetProperty("output").GetProperty("uNetCalls").GetInt32()); // int(5 × 0.8) steps, one batch-2 call each
        Assert.Equal(4, done.GetProperty("progress").GetProperty("total").GetInt32());
    }

    [Fact]
    public async Task AMultipartJobIsTheSameRequestAsItsDataUriAndAnotherSizeIsFitted()
    {
        await using var app = await TestApp.StartAsync();
        byte[] jpeg = Picture(300, 200, "jpeg");
        const string json = """{"prompt": "a castle", "steps": 2, "seed": 9, "strength": 0.5, "scheduler": "ddim"}""";
        var key = new Dictionary<string, string> { ["Idempotency-Key"] = "img-1" };
        using var form = new MultipartFormDataContent
        {
            { new StringContent(json, Encoding.UTF8, "application/json"), "request" },
        };
        var part = new ByteArrayContent(jpeg);
        part.Headers.ContentType = new MediaTypeHeaderValue("image/jpeg");
        form.Add(part, "image", "castle.jpg");
        var (submitted, _) = await app.SubmitMultipartAsync(form, key);
        Assert.Equal(202, submitted.StatusCode);
        var image = Body(submitted).GetProperty("input").GetProperty("image");
        Assert.Equal(("image/jpeg", 300, 200), (image.GetProperty("mediaType").GetString(), image.GetProperty("width").GetInt32(), image.GetProperty("height").GetInt32()));
        string id = IdOf(submitted);

        // The same picture and fields as a data URI, under the same key: the same job, not a conflict.
        var (replay, _) = await app.SubmitAsync(json.Replace("}", $$""", "image": "{{DataUri(jpeg, "image/jpeg")}}"}"""), key);
        Assert.Equal(id, Body(replay).GetProperty("id").GetString());

        await app.RunNextMessageAsync();
        var done = await app.JobAsync(id);
        Assert.Equal("succeeded", done.GetProperty("status").GetString());
        Assert.Equal(1, done.GetProperty("output").GetProperty("uNetCalls").GetInt32());
    }

    public static TheoryData<string, string> BadImageBodies() => new()
    {
        { """{"prompt": "x", "image": "https://example.com/a.png"}""", "image" },
        { """{"prompt": "x", "image": "data:image/png;base64,@@@"}""", "image" },
        { """{"prompt": "x", "image": "data:image/gif;base64,R0lGODlhAQABAAAAACw="}""", "image" },
        { $$"""{"prompt": "x", "image": "{{DataUri(Picture(8, 8, "gif"), "image/png")}}"}""", "image" },
        { $$"""{"prompt": "x", "image": "{{DataUri(Picture(8, 8, "jpeg"), "image/png")}}"}""", "image" },
        { $$"""{"prompt": "x", "image": "{{DataUri(Picture(8, 8)[..40])}}"}""", "image" },
        { $$"""{"prompt": "x", "image": "{{DataUri(Picture(8, 8, "jpeg")[..200], "image/jpeg")}}"}""", "image" }, // cut inside a marker
        { $$"""{"prompt": "x", "image": "{{DataUri(ExifLoopJpeg(), "image/jpeg")}}"}""", "image" },
        { $$"""{"prompt": "x", "image": "{{DataUri(PngWithoutData())}}"}""", "image" },
        { """{"prompt": "x", "strength": 0.5}""", "strength" },
        { $$"""{"prompt": "x", "strength": 0, "image": "{{DataUri(Picture(8, 8))}}"}""", "strength" },
        { $$"""{"prompt": "x", "strength": 1.01, "image": "{{DataUri(Picture(8, 8))}}"}""", "strength" },
        { $$"""{"prompt": "x", "steps": 4, "strength": 0.2, "image": "{{DataUri(Picture(8, 8))}}"}""", "strength" },
    };

    [Theory, MemberData(nameof(BadImageBodies))]
    public async Task BadPicturesAndStrengthsAreNamed(string body, string field)
    {
        await using var app = await TestApp.StartAsync();
        var why = AssertFieldRefused((await app.SubmitAsync(body)).Result, field);
        // Our words, not the decoder's or .NET's.
        foreach (string library in new[] { "Exception", "(Parameter", "marker", "chunk", "Stream" }) Assert.DoesNotContain(library, why[0].GetString());
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);
    }

    [Fact]
    public async Task SizeBoundsDependOnWhetherAPictureIsSent()
    {
        await using var app = await TestApp.StartAsync(configure: s => s["Jobs:MaxImageRequestBytes"] = "200000");
        string padding = new(' ', 70 * 1024); // JSON allows whitespace: a plain request over 64 KB
        var (plain, _) = await app.SubmitAsync($$"""{"prompt": "x"{{padding}}}""");
        AssertProblem(plain, 413, ProblemTypes.RequestTooLarge);
        var (withPicture, _) = await app.SubmitAsync($$"""{"prompt": "x", "image": "{{DataUri(Picture(64, 64))}}"{{padding}}}""");
        Assert.Equal(202, withPicture.StatusCode);
        var (tooBig, _) = await app.SubmitAsync($$"""{"prompt": "x", "image": "{{DataUri(RandomNoisePng())}}"}""");
        AssertProblem(tooBig, 413, ProblemTypes.RequestTooLarge);
    }

    /// <summary>
    /// A 1.3 KB JPEG whose EXIF sub-IFD pointer leads back to IFD0 (with an orientation tag, so AutoOrient reads it): ImageSharp
    /// threw InvalidOperationException from AutoOrient, a 500 before the fix.
    /// </summary>
    internal static byte[] ExifLoopJpeg()
    {
        byte[] jpeg = Picture(16, 16, "jpeg");
        var tiff = new List<byte> { (byte)'I', (byte)'I', 42, 0, 8, 0, 0, 0 }; // little-endian, IFD0 at 8
        void Entry(ushort tag, ushort type, uint value)
        {
            tiff.AddRange(BitConverter.GetBytes(tag)); tiff.AddRange(BitConverter.GetBytes(type));
            tiff.AddRange(BitConverter.GetBytes(1u)); tiff.AddRange(BitConverter.GetBytes(value));
        }
        tiff.AddRange(BitConverter.GetBytes((ushort)2));
        Entry(0x0112, 3, 6); // Orientation: rotate 90°
        Entry(0x8769, 4, 8); // the Exif sub-IFD: IFD0 again
        tiff.AddRange(BitConverter.GetBytes(0u)); // no next IFD
        byte[] payload = [.. "Exif\0\0"u8.ToArray(), .. tiff];
        int length = payload.Length + 2;
        return [.. jpeg[..2], 0xFF, 0xE1, (byte)(length >> 8), (byte)length, .. payload, .. jpeg[2..]];
    }

    /// <summary>A PNG signature and header but no image data chunk.</summary>
    private static byte[] PngWithoutData()
    {
        byte[] png = Picture(8, 8);
        int idat = png.AsSpan().IndexOf("IDAT"u8) - 4; // its length field
        int iend = png.AsSpan().IndexOf("IEND"u8) - 4;
        return [.. png[..idat], .. png[iend..]];
    }

    // Incompressible pixels: a PNG over 200 KB.
    private static byte[] RandomNoisePng()
    {
        var random = new Random(1);
        using var image = new Image<Rgb24>(300, 300);
        for (int y = 0; y < 300; y++)
            for (int x = 0; x < 300; x++) image[x, y] = new Rgb24((byte)random.Next(256), (byte)random.Next(256), (byte)random.Next(256));
        using var stream = new MemoryStream();
        image.SaveAsPng(stream);
        return stream.ToArray();
    }

    [Fact]
    public async Task MultipartMistakesAreNamed()
    {
        await using var app = await TestApp.StartAsync();
        using (var noRequest = new MultipartFormDataContent { { new ByteArrayContent(Picture(8, 8)), "image", "a.png" } })
            Assert.True(AssertProblem((await app.SubmitMultipartAsync(noRequest)).Result, 400, ProblemTypes.Validation).GetProperty("errors").TryGetProperty("request", out _));
        using (var extra = new MultipartFormDataContent { { new StringContent("""{"prompt": "x"}"""), "request" }, { new StringContent("1"), "mask" } })
            Assert.True(AssertProblem((await app.SubmitMultipartAsync(extra)).Result, 400, ProblemTypes.Validation).GetProperty("errors").TryGetProperty("mask", out _));
        using (var twice = new MultipartFormDataContent
        {
            { new StringContent($$"""{"prompt": "x", "image": "{{DataUri(Picture(8, 8))}}"}"""), "request" }, { new ByteArrayContent(Picture(8, 8)), "image", "a.png" },
        })
            Assert.Contains("once", AssertProblem((await app.SubmitMultipartAsync(twice)).Result, 400, ProblemTypes.Validation).GetProperty("errors").GetProperty("image")[0].GetString());
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);
    }

    /// <summary>Defect: more than 8 parts or a 20 KB part header answered 413 "Request too large"; a cut body showed the reader's own words.</summary>
    [Fact]
    public async Task MalformedFormsAre400sInOurWords()
    {
        await using var app = await TestApp.StartAsync();
        using (var many = new MultipartFormDataContent())
        {
            for (int i = 0; i < 9; i++) many.Add(new StringContent("x"), $"part{i}");
            Assert.Contains("at most 8 parts", AssertProblem((await app.SubmitMultipartAsync(many)).Result, 400, ProblemTypes.MalformedJson).GetProperty("detail").GetString());
        }
        using (var bigHeader = new MultipartFormDataContent())
        {
            var part = new StringContent("""{"prompt": "x"}""");
            part.Headers.Add("X-Padding", new string('a', 20 * 1024));
            bigHeader.Add(part, "request");
            Assert.Contains("headers may hold at most 16 KB", AssertProblem((await app.SubmitMultipartAsync(bigHeader)).Result, 400, ProblemTypes.MalformedJson).GetProperty("detail").GetString());
        }

        // A body cut before its closing boundary.
        using var whole = new MultipartFormDataContent { { new StringContent("""{"prompt": "x"}"""), "request" }, { new ByteArrayContent(Picture(8, 8)), "image", "a.png" } };
        byte[] bytes = await whole.ReadAsByteArrayAsync();
        var req = TestApp.Request("POST", "/api/generations");
        req.Body = new MemoryStream(bytes[..(bytes.Length - 60)]);
        req.ContentType = whole.Headers.ContentType!.ToString();
        string detail = AssertProblem((Microsoft.AspNetCore.Mvc.ContentResult)await app.Api.Submit(req, default), 400, ProblemTypes.MalformedJson).GetProperty("detail").GetString()!;
        Assert.Contains("ends before its closing boundary", detail);
        foreach (string library in new[] { "Stream", "component", "Exception" }) Assert.DoesNotContain(library, detail);
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);
    }

    [Fact]
    public async Task AJobWhosePictureIsGoneFailsWithAClearError()
    {
        await using var app = await TestApp.StartAsync();
        var (submitted, _) = await app.SubmitAsync($$"""{"prompt": "x", "steps": 2, "image": "{{DataUri(Picture(64, 64))}}"}""");
        string id = IdOf(submitted);
        await app.Store.DeleteInputImageAsync(id, default);
        await app.RunNextMessageAsync();
        var failed = await app.JobAsync(id);
        Assert.Equal("failed", failed.GetProperty("status").GetString());
        Assert.Contains("no longer stored", failed.GetProperty("error").GetProperty("detail").GetString());
    }

    [Fact]
    public async Task AModelWithoutAnEncoderRefusesPicturesOnceLoaded()
    {
        await using var app = await TestApp.StartAsync(AzuriteFixture.TinyLcm);
        await app.Pipelines.GetAsync(default);
        var (result, _) = await app.SubmitAsync($$"""{"prompt": "x", "image": "{{DataUri(Picture(64, 64))}}"}""");
        var problem = AssertProblem(result, 400, ProblemTypes.Validation);
        Assert.Contains("vae_encoder", problem.GetProperty("errors").GetProperty("image")[0].GetString());
    }
}
