using SdFunctions.Cli;

// Ctrl+C cancels the running generation between steps instead of killing the process mid-write.
using var cancel = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; cancel.Cancel(); };
return await CliApp.RunAsync(args, Console.Out, Console.Error, cancel.Token);
