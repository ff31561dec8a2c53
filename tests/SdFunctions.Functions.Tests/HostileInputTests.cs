using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Mvc;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// The service as an attacker and a busy day would use it: hostile bodies and ids always get a 4xx problem and queue
/// nothing; a hundred jobs drained by two workers all succeed with one image each and leave no message behind.
/// </summary>
[Collection(AzuriteCollection.Name)]
public class HostileInputTests(Xunit.Abstractions.ITestOutputHelper output)
{
    public static TheoryData<string, string> HostileBodies() => new()
    {
        { "deep nesting", new string('[', 5000) + new string(']', 5000) },
        { "deep object", string.Concat(Enumerable.Repeat("""{"a":""", 2000)) + "1" + new string('}', 2000) },
        { "trailing comma", """{"prompt": "x",}""" },
        { "comment", """{"prompt": "x" /* hi */}""" },
        { "trailing data", """{"prompt": "x"} {"prompt": "y"}""" },
        { "single quotes", "{'prompt': 'x'}" },
        { "NaN literal", """{"prompt": "x", "guidanceScale": NaN}""" },
        { "Infinity literal", """{"prompt": "x", "guidanceScale": Infinity}""" },
        { "huge exponent", """{"prompt": "x", "guidanceScale": 1e400}""" },
        { "steps overflow", """{"prompt": "x", "steps": 99999999999999999999}""" },
        { "seed as float", """{"prompt": "x", "seed": 1.5}""" },
        { "steps exponent", """{"prompt": "x", "steps": 1e1}""" },
        { "leading zero", """{"prompt": "x", "steps": 02}""" },
        { "bool steps", """{"prompt": "x", "steps": true}""" },
        { "null prompt", """{"prompt": null}""" },
        { "array prompt", """{"prompt": ["x"]}""" },
        { "object prompt", """{"prompt": {"text": "x"}}""" },
        { "proto key", """{"prompt": "x", "__proto__": {"admin": true}}""" },
        { "long unknown key", $$"""{"prompt": "x", "{{new string('k', 10_000)}}": 1}""" },
        { "duplicate in other case", """{"prompt": "x", "PROMPT": "y"}""" },
        { "numbers as strings", """{"prompt": "x", "width": "256"}""" },
        { "control-only prompt", """{"prompt": "\u0007\u0008\u007f"}""" },
        { "zero-width prompt", """{"prompt": "\u200b\u200c\u200d\ufeff"}""" },
        { "overlong negative", $$"""{"prompt": "x", "negativePrompt": "{{new string('n', 5000)}}"}""" },
        { "negative seed", """{"prompt": "x", "seed": -9223372036854775808}""" },
        { "scheduler path", """{"prompt": "x", "scheduler": "../../etc/passwd"}""" },
        { "decoder injection", """{"prompt": "x", "decoder": "full; rm -rf /"}""" },
        { "string body", "\"a prompt\"" },
        { "number body", "42" },
        { "whitespace only", "   \n\t " },
    };

    [Theory, MemberData(nameof(HostileBodies))]
    public async Task AHostileBodyIsA400ProblemAndQueuesNothing(string name, string body)
    {
        await using var app = await TestApp.StartAsync();
        var (result, _) = await app.SubmitAsync(body);
        Assert.True(result.StatusCode == 400, $"{name}: {result.StatusCode} {result.Content}");
        Assert.Equal(Problem.ContentType, result.ContentType);
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);
    }

    [Fact]
    public async Task InvalidUtf8AndHugeWhitespaceAreRefused()
    {
        await using var app = await TestApp.StartAsync();
        var req = TestApp.Request("POST", "/api/generations", "{}");
        req.Body = new MemoryStream([.. "{\"prompt\": \""u8, 0xC3, 0x28, 0xFF, .. "\"}"u8]);
        AssertProblem((ContentResult)await app.Api.Submit(req, default), 400, ProblemTypes.MalformedJson);
        var padded = TestApp.Request("POST", "/api/generations", new string(' ', 70_000) + """{"prompt": "x"}""");
        AssertProblem((ContentResult)await app.Api.Submit(padded, default), 413, ProblemTypes.RequestTooLarge);
        Assert.Null((await app.Messages.PeekMessageAsync()).Value);
    }

    [Theory]
    [InlineData("")]
    [InlineData(" ")]
    [InlineData("..")]
    [InlineData("%2e%2e%2fjobs")]
    [InlineData("0123456789abcdef0123456789abcdeg")]
    [InlineData("0123456789ABCDEF0123456789ABCDEF")]
    [InlineData("0123456789abcdef0123456789abcdef0")]
    [InlineData("0123456789abcdef0123456789abcde")]
    [InlineData("0123456789abcdef0123456789abcdef\n")]
    [InlineData("\u0660123456789abcdef0123456789abcdef")]
    [InlineData("01234567-89ab-cdef-0123-456789abcdef")]
    [InlineData("jobs/0123456789abcdef0123456789abcdef")]
    public async Task AMalformedIdIsA400EverywhereAndLeaksNothing(string id)
    {
        await using var app = await TestApp.StartAsync();
        foreach (var result in new[]
        {
            await app.GetAsync(id), await app.CancelAsync(id),
            (ContentResult)await app.Api.GetImage(TestApp.Request("GET", "/api/generations/x/image"), id, default),
        })
        {
            var problem = AssertProblem(result, 400, ProblemTypes.MalformedId);
            if (id.Trim().Length > 0) Assert.DoesNotContain(id, problem.GetProperty("detail").GetString()); // input is not echoed
        }
    }

    [Fact]
    public async Task AHundredJobsDrainedByTwoWorkersAllSucceedWithOneImageEach()
    {
        // A hundred submissions at once on two busy cores can take Azurite past the HTTP path's 10 s storage budget (a 503 the
        // client would retry); this test is about the drain, so it gives them a minute.
        await using var app = await TestApp.StartAsync(configure: s => s["Jobs:HttpTimeBudget"] = "00:01:00");
        await app.Pipelines.GetAsync();
        var submitted = await Task.WhenAll(Enumerable.Range(0, 100).Select(i =>
            app.SubmitAsync($$"""{"prompt": "job {{i}}", "steps": 1, "seed": {{i}}}""")));
        Assert.All(submitted, s => Assert.True(s.Result.StatusCode == 202, s.Result.Content));
        var ids = submitted.Select(s => JsonDocument.Parse(s.Result.Content!).RootElement.GetProperty("id").GetString()!).ToList();
        Assert.Equal(100, ids.Distinct().Count());

        var watch = System.Diagnostics.Stopwatch.StartNew();
        async Task DrainAsync()
        {
            while ((await app.Messages.ReceiveMessageAsync(TimeSpan.FromMinutes(5))).Value is { } message)
            {
                await app.Queue.Process(message, default);
                await app.Messages.DeleteMessageAsync(message.MessageId, message.PopReceipt);
            }
        }
        await Task.WhenAll(DrainAsync(), DrainAsync());
        output.WriteLine($"100 one-step jobs drained by two workers in {watch.Elapsed.TotalSeconds:F1} s");

        foreach (string id in ids)
        {
            var job = (await app.Store.GetAsync(id, default))!;
            Assert.Equal((JobStatus.Succeeded, 1), (job.Status, job.Attempt));
        }
        var images = new List<string>();
        await foreach (var b in app.Images.GetBlobsAsync(Azure.Storage.Blobs.Models.BlobTraits.None, Azure.Storage.Blobs.Models.BlobStates.None, null, default))
            images.Add(b.Name);
        Assert.Equal(ids.Select(id => $"{id}.png").Order(), images.Order());
        Assert.Equal(0, (await app.Messages.GetPropertiesAsync()).Value.ApproximateMessagesCount);
        Assert.Null((await app.Poison.PeekMessageAsync()).Value);
    }
}
